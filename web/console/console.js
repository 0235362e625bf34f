/* shopdesk agent console. Talks to /v1/agent (docs/protocol.md). Shopper text is only ever set
 * with textContent. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var KEY = "shopdesk.agent-token";
  var token = null, me = null, labels = { intent: [], sentiment: [] };
  var items = [], fetchedAt = 0, current = null, transcript = null, shownConversation = null;
  var pinnedToBottom = true, programmaticTop = -1;
  // Scrolls the transcript to its newest message and remembers that the agent is there.
  function toBottom(ol) {
    ol.scrollTop = ol.scrollHeight;
    programmaticTop = ol.scrollTop;
    pinnedToBottom = true;
  }
  var canned = [], historyFor = null;
  var stream = null, streamAttempt = 0, refreshTimer = null;

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "class") e.className = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }

  function api(method, path, body) {
    var opts = { method: method, headers: { Authorization: "Bearer " + token } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    return fetch("/v1/agent" + path, opts).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (r.status === 401) { signOut("Your token was not accepted."); throw new Error("unauthorized"); }
        if (!r.ok) throw new Error((j.error && j.error.message) || ("HTTP " + r.status));
        return j;
      });
    });
  }

  // --- sign in ------------------------------------------------------------------------------
  function signIn(t) {
    token = t;
    return api("GET", "/me").then(function (j) {
      me = j.agent;
      labels = j.labels || labels;
      sessionStorage.setItem(KEY, t);
      $("agent-name").textContent = me;
      $("signin").hidden = true;
      $("app").hidden = false;
      $("me").hidden = false;
      loadQueue();
      loadCanned();
      openStream();
    });
  }
  function signOut(msg) {
    sessionStorage.removeItem(KEY);
    token = null;
    if (stream) { stream.onclose = null; stream.close(); stream = null; }
    $("app").hidden = true;
    $("me").hidden = true;
    $("signin").hidden = false;
    $("signin-error").textContent = msg || "";
  }
  $("signin-form").addEventListener("submit", function (e) {
    e.preventDefault();
    $("signin-error").textContent = "";
    signIn($("token").value.trim()).catch(function (err) {
      if (err.message !== "unauthorized") $("signin-error").textContent = err.message;
    });
  });
  $("sign-out").addEventListener("click", function () { signOut(""); });

  // --- live events --------------------------------------------------------------------------
  function openStream() {
    var url = location.origin.replace(/^http/, "ws") + "/v1/agent/stream?access_token=" + encodeURIComponent(token);
    stream = new WebSocket(url);
    stream.onopen = function () { streamAttempt = 0; setLive(true); loadQueue(); if (current) loadTranscript(current); };
    stream.onmessage = function (ev) {
      var e;
      try { e = JSON.parse(ev.data); } catch (x) { return; }
      var id = (e.escalation && e.escalation.id) || e.escalation_id;
      scheduleRefresh();
      if (current && id === current) loadTranscript(current);
    };
    stream.onclose = function () {
      setLive(false);
      stream = null;
      if (!token) return;
      streamAttempt++;
      setTimeout(function () { if (token && !stream) openStream(); }, Math.min(15000, 500 * Math.pow(2, streamAttempt)));
    };
  }
  function setLive(on) {
    $("live").textContent = on ? "live" : "offline, reconnecting";
    $("live").className = on ? "live" : "live off";
  }
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(function () { refreshTimer = null; loadQueue(); }, 150);
  }

  // --- queue --------------------------------------------------------------------------------
  $("filter").addEventListener("change", loadQueue);
  $("sort").addEventListener("change", loadQueue);

  function loadQueue() {
    if (!token) return;
    var q = "?status=" + $("filter").value + "&sort=" + $("sort").value;
    api("GET", "/escalations" + q).then(function (j) {
      items = j.escalations || [];
      fetchedAt = Date.now();
      renderQueue();
    }).catch(function () {});
  }

  function waited(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }
  function waitingNow(it) {
    return it.status === "resolved" ? it.waiting_seconds : it.waiting_seconds + (Date.now() - fetchedAt) / 1000;
  }

  function badge(text, cls) { return el("span", { class: "badge " + (cls || ""), text: text }); }

  function renderQueue() {
    var ul = $("queue");
    while (ul.firstChild) ul.removeChild(ul.firstChild);
    $("queue-empty").hidden = items.length > 0;
    items.forEach(function (it) {
      var wait = el("span", { class: "wait", "data-id": it.id, text: waited(waitingNow(it)) });
      var btn = el("button", { type: "button", "aria-current": String(it.id === current),
        onclick: function () { select(it.id); } }, [
        el("span", { class: "row1" }, [el("span", { text: it.customer_id || "Anonymous shopper" }), wait]),
        el("span", null, [
          it.sentiment ? badge(it.sentiment + (it.sentiment === "negative" ? pct(it.negativity) : ""), it.sentiment) : null,
          it.intent ? badge(it.intent) : null,
          badge(it.reason.replace(/_/g, " ")),
          it.status !== "open" ? badge(it.status + (it.agent ? " · " + it.agent : ""), "status-" + it.status) : null
        ]),
        el("span", { class: "last", text: it.last_message ? "“" + it.last_message + "”" : "" })
      ]);
      ul.appendChild(el("li", { "data-escalation": it.id }, [btn]));
    });
  }
  setInterval(function () {
    Array.prototype.forEach.call(document.querySelectorAll(".wait"), function (w) {
      var it = items.find(function (x) { return x.id === w.getAttribute("data-id"); });
      if (it) w.textContent = waited(waitingNow(it));
    });
  }, 1000);

  // --- transcript ---------------------------------------------------------------------------
  function select(id) {
    current = id;
    renderQueue();
    loadTranscript(id);
  }

  function loadTranscript(id) {
    return api("GET", "/escalations/" + encodeURIComponent(id)).then(function (j) {
      if (current !== id) return;
      transcript = j;
      renderTranscript();
    }).catch(function (err) { $("chat-error").textContent = err.message; });
  }

  function pct(x) { return x == null ? "" : " " + Math.round(x * 100) + "%"; }

  function renderTranscript() {
    var e = transcript.escalation, c = transcript.conversation;
    $("chat-empty").hidden = true;
    $("chat").hidden = false;
    $("chat-error").textContent = "";
    $("chat-title").textContent = "Conversation with " + (c.customer_id || "an anonymous shopper");
    $("chat-meta").textContent = "Escalated: " + e.reason.replace(/_/g, " ") + " · status " + e.status +
      (e.agent ? " (" + e.agent + ")" : "") + " · opened " + new Date(e.created_at).toLocaleString();
    var slots = c.slots || {};
    var keys = Object.keys(slots);
    $("slots").textContent = keys.length ? "Known: " + keys.map(function (k) { return k.replace(/_/g, " ") + " " + slots[k]; }).join(", ") : "";
    var mine = e.status === "claimed" && e.agent === me;
    $("claim").disabled = e.status !== "open";
    $("resolve").disabled = e.status === "resolved";
    $("reply").disabled = !mine;
    $("send").disabled = !mine;
    $("reply").placeholder = mine ? "Write to the shopper…" : e.status === "claimed" ? "Claimed by " + e.agent : "Claim the conversation to reply";

    $("canned").disabled = !mine;

    // Stay at the newest message when the agent was there (or opens another conversation);
    // leave the scroll alone while they read further up.
    var ol = $("messages");
    var fresh = shownConversation !== c.id;
    var atBottom = fresh || pinnedToBottom;
    shownConversation = c.id;
    while (ol.firstChild) ol.removeChild(ol.firstChild);
    timeline(transcript.messages, transcript.notes || []).forEach(function (x) {
      ol.appendChild(x.note ? noteItem(x.note) : messageItem(x.message));
    });
    drawTrend(transcript.messages);
    if (atBottom) toBottom(ol);
    if (historyFor !== c.id) loadHistory(c);
  }

  // Messages and internal notes in one list, by time (a note written between two messages
  // sits between them).
  function timeline(messages, notes) {
    var out = messages.map(function (m) { return { at: m.created_at, message: m }; });
    notes.forEach(function (n) { out.push({ at: n.created_at, note: n }); });
    return out.sort(function (a, b) { return a.at - b.at; });
  }

  function noteItem(n) {
    return el("li", { class: "note", "data-note": n.id }, [
      el("span", { class: "who", text: "Internal note · " + n.agent + " · " + new Date(n.created_at).toLocaleTimeString() }),
      el("div", { class: "text", text: n.text })
    ]);
  }

  function messageItem(m) {
    var who = m.role === "shopper" ? "Shopper" : m.role === "agent" ? (m.author || "Agent") : "Bot";
    var li = el("li", { class: m.role, "data-message": m.id }, [
      el("span", { class: "who", text: who + " · " + new Date(m.created_at).toLocaleTimeString() }),
      el("div", { class: "text", text: m.text })
    ]);
    if (m.role === "shopper") {
      var fix = m.corrected || {};
      var row = el("div", { class: "labels" }, [
        m.intent ? badge((fix.intent ? m.intent + " → " + fix.intent : m.intent) + (fix.intent ? "" : pct(m.intent_confidence)), fix.intent ? "fixed" : "") : null,
        m.sentiment ? badge((fix.sentiment ? m.sentiment + " → " + fix.sentiment : m.sentiment) + (fix.sentiment ? "" : pct(m.sentiment_score)), fix.sentiment ? "fixed" : (m.sentiment || "")) : null,
        el("button", { type: "button", class: "ghost", text: "Relabel", "aria-label": "Relabel this message",
          onclick: function () { relabelForm(li, m); } })
      ]);
      li.appendChild(row);
    }
    return li;
  }

  function select_(name, options, value) {
    var s = el("select", { "aria-label": name });
    s.appendChild(el("option", { value: "", text: "(" + name + " unchanged)" }));
    options.forEach(function (o) {
      var opt = el("option", { value: o, text: o.replace(/_/g, " ") });
      if (o === value) opt.selected = true;
      s.appendChild(opt);
    });
    return s;
  }

  function relabelForm(li, m) {
    if (li.querySelector(".relabel")) return;
    var fix = m.corrected || {};
    var si = select_("intent", labels.intent, fix.intent || m.intent);
    var ss = select_("sentiment", labels.sentiment, fix.sentiment || m.sentiment);
    var err = el("span", { class: "error", role: "alert" });
    var form = el("form", { class: "relabel" }, [si, ss,
      el("button", { type: "submit", text: "Save" }),
      el("button", { type: "button", class: "ghost", text: "Cancel", onclick: function () { form.remove(); } }), err]);
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var body = {};
      if (si.value && si.value !== (fix.intent || m.intent)) body.intent = si.value;
      if (ss.value && ss.value !== (fix.sentiment || m.sentiment)) body.sentiment = ss.value;
      if (!body.intent && !body.sentiment) { form.remove(); return; }
      api("POST", "/messages/" + encodeURIComponent(m.id) + "/relabel", body)
        .then(function () { loadTranscript(current); })
        .catch(function (x) { err.textContent = x.message; });
    });
    li.appendChild(form);
    si.focus();
  }

  // Shopper messages only: +P for positive, −P for negative, 0 for neutral.
  function drawTrend(messages) {
    var svg = $("trend");
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    var ns = "http://www.w3.org/2000/svg";
    var vals = messages.filter(function (m) { return m.role === "shopper" && m.sentiment; }).map(function (m) {
      var label = (m.corrected && m.corrected.sentiment) || m.sentiment;
      var p = m.sentiment_score == null ? 1 : m.sentiment_score;
      return label === "positive" ? p : label === "negative" ? -p : 0;
    });
    var mid = document.createElementNS(ns, "line");
    [["x1", 0], ["x2", 300], ["y1", 20], ["y2", 20], ["stroke", "#ccd3cc"], ["stroke-dasharray", "3 3"]].forEach(function (a) { mid.setAttribute(a[0], a[1]); });
    svg.appendChild(mid);
    if (!vals.length) return;
    var step = vals.length > 1 ? 290 / (vals.length - 1) : 0;
    var pts = vals.map(function (v, i) { return [5 + i * step, 20 - v * 16]; });
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", "#2f5d50");
    line.setAttribute("stroke-width", "2");
    svg.appendChild(line);
    pts.forEach(function (p, i) {
      var c = document.createElementNS(ns, "circle");
      c.setAttribute("cx", p[0]); c.setAttribute("cy", p[1]); c.setAttribute("r", "3");
      c.setAttribute("fill", vals[i] < -0.2 ? "#c0392b" : vals[i] > 0.2 ? "#27ae60" : "#7f8c8d");
      svg.appendChild(c);
    });
    svg.setAttribute("aria-label", "Sentiment of the shopper's messages over time: " +
      vals.map(function (v) { return v < -0.2 ? "negative" : v > 0.2 ? "positive" : "neutral"; }).join(", "));
  }

  // --- actions ------------------------------------------------------------------------------
  function act(path, body) {
    var id = current;
    $("chat-error").textContent = "";
    return api("POST", "/escalations/" + encodeURIComponent(id) + path, body)
      .then(function () { loadTranscript(id); loadQueue(); })
      .catch(function (x) { $("chat-error").textContent = x.message; loadTranscript(id); });
  }
  $("claim").addEventListener("click", function () { act("/claim"); });
  $("resolve").addEventListener("click", function () { act("/resolve"); });
  $("reply-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var text = $("reply").value.trim();
    if (!text) return;
    act("/reply", { text: text }).then(function () {
      if (!$("chat-error").textContent) $("reply").value = "";
    });
  });
  $("reply").addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("reply-form").requestSubmit();
  });

  // --- canned replies -----------------------------------------------------------------------
  function loadCanned() {
    api("GET", "/canned").then(function (j) {
      canned = j.replies || [];
      var sel = $("canned");
      while (sel.options.length > 1) sel.remove(1);
      canned.forEach(function (r, i) { sel.appendChild(el("option", { value: String(i), text: r.title })); });
      $("canned-tools").hidden = canned.length === 0;
    }).catch(function () {});
  }
  // The text goes into the reply box at the cursor (replacing a selection) for the agent to
  // edit; nothing is sent until they press Send.
  $("canned").addEventListener("change", function () {
    var r = canned[Number(this.value)];
    this.value = "";
    if (!r) return;
    var box = $("reply");
    var start = box.selectionStart, end = box.selectionEnd, v = box.value;
    if (start == null) { start = end = v.length; }
    box.value = v.slice(0, start) + r.text + v.slice(end);
    box.focus();
    box.setSelectionRange(start + r.text.length, start + r.text.length);
  });

  // --- internal notes -----------------------------------------------------------------------
  $("note-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var text = $("note").value.trim();
    if (!text || !current) return;
    var id = current;
    $("chat-error").textContent = "";
    api("POST", "/escalations/" + encodeURIComponent(id) + "/notes", { text: text })
      .then(function () {
        $("note").value = "";
        return loadTranscript(id);
      })
      .then(function () { toBottom($("messages")); })
      .catch(function (x) { $("chat-error").textContent = x.message; });
  });
  // Whether the agent is at the newest message. Kept from scroll events rather than measured
  // at render time: when the history pane opens it narrows the list, the messages wrap taller,
  // and a measurement then would read "scrolled up" and leave the newest message under the
  // composer. While pinned, a resize keeps the newest message in view. (The list has
  // `overflow-anchor: none`: Chrome's scroll anchoring would otherwise move the scroll when the
  // history pane narrows it.)
  (function () {
    var ol = $("messages");
    ol.addEventListener("scroll", function () {
      // Our own scroll's event arrives a frame later, after the layout may have grown (the
      // history pane narrows the list): it says nothing about where the agent wants to be.
      if (ol.scrollTop === programmaticTop) return;
      pinnedToBottom = ol.scrollTop + ol.clientHeight >= ol.scrollHeight - 40;
    });
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        if (pinnedToBottom) toBottom(ol);
      }).observe(ol);
    }
  })();
  $("note").addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("note-form").requestSubmit();
  });

  // --- customer history ---------------------------------------------------------------------
  function loadHistory(c) {
    historyFor = c.id;
    var list = $("history-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    if (!c.customer_id) { $("history").hidden = true; return; }
    $("history").hidden = false;
    $("history-who").textContent = "Other conversations of " + c.customer_id;
    $("history-empty").hidden = true;
    api("GET", "/customers/" + encodeURIComponent(c.customer_id) + "/conversations?except=" + encodeURIComponent(c.id))
      .then(function (j) {
        if (historyFor !== c.id) return;
        var convs = j.conversations || [];
        $("history-empty").hidden = convs.length > 0;
        convs.forEach(function (h) { list.appendChild(historyItem(h)); });
      })
      .catch(function (x) { $("history-who").textContent = x.message; });
  }
  function historyItem(h) {
    var attrs = { type: "button" };
    if (h.escalation_id) attrs.onclick = function () { select(h.escalation_id); };
    else { attrs.disabled = "disabled"; attrs.title = "Answered by the bot: no escalation to open"; }
    return el("li", { "data-conversation": h.id }, [el("button", attrs, [
      el("span", { class: "row1" }, [
        el("span", { class: "date", text: new Date(h.created_at).toLocaleString() }),
        badge(h.status, "status-" + h.status)
      ]),
      el("span", { class: "last", text: h.first_message ? "“" + h.first_message + "”" : "(no message)" }),
      el("span", { class: "meta", text: h.message_count + (h.message_count === 1 ? " message" : " messages") })
    ])]);
  }

  // --- search -------------------------------------------------------------------------------
  $("search-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var q = $("search").value.trim();
    $("search-error").textContent = "";
    var list = $("search-results");
    while (list.firstChild) list.removeChild(list.firstChild);
    $("search-box").hidden = false;
    $("queue-box").hidden = true;
    if (q.length < 2) { $("search-summary").textContent = ""; $("search-error").textContent = "Type at least 2 characters."; return; }
    $("search-summary").textContent = "Searching…";
    api("GET", "/search?q=" + encodeURIComponent(q)).then(function (j) {
      var hits = j.hits || [];
      $("search-summary").textContent = hits.length + (hits.length === 1 ? " result" : " results") + " for “" + q + "”";
      hits.forEach(function (h) { list.appendChild(hitItem(h)); });
    }).catch(function (x) { $("search-summary").textContent = ""; $("search-error").textContent = x.message; });
  });
  $("search-clear").addEventListener("click", function () {
    $("search").value = "";
    $("search-box").hidden = true;
    $("queue-box").hidden = false;
  });
  function hitItem(h) {
    var attrs = { type: "button" };
    if (h.escalation_id) attrs.onclick = function () { select(h.escalation_id); };
    else { attrs.disabled = "disabled"; attrs.title = "Answered by the bot: no escalation to open"; }
    var what = h.message_id ? (h.role === "shopper" ? "shopper" : h.role === "agent" ? "agent" : "bot") : "customer";
    return el("li", { "data-hit": h.message_id || h.conversation_id }, [el("button", attrs, [
      el("span", { class: "row1" }, [
        el("span", { text: h.customer_id || "Anonymous shopper" }),
        el("span", { class: "date", text: new Date(h.created_at).toLocaleString() })
      ]),
      el("span", null, [badge(what), h.escalation_id ? null : badge("no escalation")]),
      el("span", { class: "last", text: h.text || "" })
    ])]);
  }

  var saved = sessionStorage.getItem(KEY);
  if (saved) signIn(saved).catch(function () {});
})();
