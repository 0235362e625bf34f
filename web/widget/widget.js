/* shopdesk chat widget: one script tag, no dependencies.
 *   <script src="https://support.shop.example/widget.js" data-server="https://support.shop.example"
 *           data-locale="en" data-customer="c0042" defer></script>
 * Speaks /v1/chat (docs/protocol.md). Every shopper, bot and agent text is put in the page with
 * textContent, never as HTML. */
(function () {
  "use strict";
  if (window.shopdeskWidget) return;
  var script = document.currentScript || document.querySelector("script[src*='widget.js']");
  var ds = (script && script.dataset) || {};
  var base = ds.server || (script && script.src ? new URL(script.src, location.href).origin : location.origin);
  base = base.replace(/\/+$/, "");
  var wsUrl = base.replace(/^http/, "ws") + "/v1/chat";

  var STRINGS = {
    en: { open: "Chat with us", close: "Close chat", title: "Shop assistant", placeholder: "Type your message…",
      send: "Send", typing: "The assistant is typing…", helpful: "Helpful", unhelpful: "Not helpful",
      thanks: "Thanks for the feedback.", joined: "{agent} joined the chat.", agent: "Agent",
      resolved: "The conversation was marked as solved. The assistant is back.", connecting: "Connecting…",
      reconnecting: "Connection lost. Reconnecting…", escalated: "A person from our team will join.",
      unread: "{n} unread", you: "You", intro: "Hi! Ask me about your order, returns, sizes or our products.", bot: "Assistant", suggestions: "You may like", log: "Chat messages",
      error: "Something went wrong: {message}", about: "Asking about: {title}",
      qStock: "Is it in stock?", qPrice: "How much is it?", qSizes: "What sizes does it come in?" },
    de: { open: "Chatten Sie mit uns", close: "Chat schließen", title: "Shop-Assistent", placeholder: "Ihre Nachricht…",
      send: "Senden", typing: "Der Assistent schreibt…", helpful: "Hilfreich", unhelpful: "Nicht hilfreich",
      thanks: "Danke für Ihr Feedback.", joined: "{agent} ist dem Chat beigetreten.", agent: "Mitarbeiter",
      resolved: "Das Gespräch wurde als gelöst markiert. Der Assistent ist zurück.", connecting: "Verbinde…",
      reconnecting: "Verbindung unterbrochen. Verbinde neu…", escalated: "Jemand aus unserem Team meldet sich.",
      unread: "{n} ungelesen", you: "Sie", intro: "Hallo! Fragen Sie mich zu Bestellung, Rücksendung, Größen oder Produkten.", bot: "Assistent", suggestions: "Das könnte Ihnen gefallen",
      log: "Chatnachrichten", error: "Etwas ist schiefgelaufen: {message}", about: "Frage zu: {title}" },
    fr: { open: "Discuter avec nous", close: "Fermer le chat", title: "Assistant de la boutique",
      placeholder: "Votre message…", send: "Envoyer", typing: "L'assistant écrit…", helpful: "Utile",
      unhelpful: "Pas utile", thanks: "Merci pour votre avis.", joined: "{agent} a rejoint la conversation.",
      agent: "Conseiller", resolved: "La conversation est résolue. L'assistant est de retour.",
      connecting: "Connexion…", reconnecting: "Connexion perdue. Reconnexion…",
      escalated: "Une personne de notre équipe va vous répondre.", unread: "{n} non lus", you: "Vous", intro: "Bonjour ! Posez-moi vos questions sur une commande, un retour, les tailles ou nos produits.",
      bot: "Assistant", suggestions: "Vous aimerez peut-être", log: "Messages du chat",
      error: "Une erreur est survenue : {message}", about: "Question sur : {title}" },
    es: { open: "Chatea con nosotros", close: "Cerrar chat", title: "Asistente de la tienda",
      placeholder: "Escribe tu mensaje…", send: "Enviar", typing: "El asistente está escribiendo…",
      helpful: "Útil", unhelpful: "No útil", thanks: "Gracias por tu opinión.", joined: "{agent} se unió al chat.",
      agent: "Agente", resolved: "La conversación se resolvió. El asistente ha vuelto.", connecting: "Conectando…",
      reconnecting: "Conexión perdida. Reconectando…", escalated: "Una persona de nuestro equipo se unirá.",
      unread: "{n} sin leer", you: "Tú", intro: "¡Hola! Pregúntame por tu pedido, devoluciones, tallas o productos.", bot: "Asistente", suggestions: "Te puede gustar", log: "Mensajes del chat",
      error: "Algo salió mal: {message}", about: "Pregunta sobre: {title}" },
    zh: { open: "在线咨询", close: "关闭对话", title: "购物助手", placeholder: "请输入消息…",
      send: "发送", typing: "助手正在输入…", helpful: "有帮助", unhelpful: "没帮助",
      thanks: "感谢您的反馈。", joined: "{agent} 加入了对话。", agent: "客服",
      resolved: "对话已标记为已解决，助手回来了。", connecting: "正在连接…",
      reconnecting: "连接已断开，正在重新连接…", escalated: "我们团队的工作人员会来为您服务。",
      unread: "{n} 条未读", you: "您", intro: "您好！订单、退货、尺码或商品的问题都可以问我。", bot: "助手", suggestions: "您可能会喜欢",
      log: "聊天消息", error: "出错了：{message}", about: "正在咨询：{title}",
      qStock: "有货吗？", qPrice: "多少钱？", qSizes: "有哪些尺码？" }
  };
  var locale = (ds.locale || document.documentElement.lang || navigator.language || "en").toLowerCase();
  var T = STRINGS[locale] || STRINGS[locale.split("-")[0]] || STRINGS.en;
  function t(key, vars) {
    return (T[key] || STRINGS.en[key]).replace(/\{(\w+)\}/g, function (_, k) { return vars && k in vars ? vars[k] : ""; });
  }

  var CSS = [
    ":host{all:initial}",
    "*{box-sizing:border-box;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}",
    ".bubble{position:fixed;right:20px;bottom:20px;width:60px;height:60px;border-radius:50%;border:0;",
    "background:#2f5d50;color:#fff;cursor:pointer;box-shadow:0 4px 14px rgba(0,0,0,.25);z-index:2147483000}",
    ".bubble svg{width:28px;height:28px;vertical-align:middle}",
    ".bubble:focus-visible,button:focus-visible,a:focus-visible,textarea:focus-visible{outline:3px solid #f0b429;outline-offset:2px}",
    ".badge{position:absolute;top:-4px;right:-4px;min-width:22px;height:22px;border-radius:11px;background:#c0392b;",
    "color:#fff;font-size:12px;line-height:22px;text-align:center;padding:0 6px}",
    ".panel{position:fixed;right:20px;bottom:92px;width:370px;height:min(600px,calc(100vh - 112px));background:#fff;",
    "border-radius:14px;box-shadow:0 8px 30px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden;",
    "z-index:2147483000;color:#1d1d1f;font-size:15px}",
    ".panel[hidden]{display:none}",
    "header{background:#2f5d50;color:#fff;padding:12px 14px;display:flex;align-items:center;gap:8px}",
    "header h2{font-size:16px;margin:0;flex:1}",
    "header .who{font-size:12px;opacity:.85;display:block;font-weight:400}",
    "header button{background:none;border:0;color:#fff;font-size:22px;cursor:pointer;line-height:1;padding:4px 8px}",
    ".status{font-size:12px;background:#fff4ce;color:#5c4400;padding:4px 12px}",
    ".status:empty{display:none}",
    ".log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px;background:#f6f7f5}",
    ".log>*{flex-shrink:0}",
    ".msg{max-width:85%;padding:8px 11px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere;line-height:1.35}",
    ".msg.shopper{align-self:flex-end;background:#2f5d50;color:#fff;border-bottom-right-radius:4px}",
    ".msg.bot,.msg.agent{align-self:flex-start;background:#fff;border:1px solid #dde2dc;border-bottom-left-radius:4px}",
    ".msg.agent{border-color:#2f5d50}",
    ".msg .by{display:block;font-size:11px;color:#56635d;margin-bottom:2px}",
    ".msg a{color:inherit}",
    ".sys{align-self:center;font-size:12px;color:#56635d;text-align:center;max-width:90%}",
    ".fb{display:flex;gap:4px;margin-top:6px}",
    ".fb button{border:1px solid #cfd6cf;background:#fff;border-radius:12px;cursor:pointer;font-size:12px;padding:1px 8px;color:#33403a}",
    ".fb button[aria-pressed=true]{background:#e3efe9;border-color:#2f5d50}",
    ".cards{display:flex;gap:8px;overflow-x:auto;padding:2px 0 4px;align-self:stretch}",
    ".card{flex:0 0 130px;background:#fff;border:1px solid #dde2dc;border-radius:10px;overflow:hidden;text-decoration:none;color:#1d1d1f}",
    ".card img{width:100%;height:100px;object-fit:cover;display:block;background:#eef1ed}",
    ".card span{display:block;padding:4px 8px;font-size:13px}",
    ".card .price{font-weight:600;padding-top:0}",
    ".quick{display:flex;flex-wrap:wrap;gap:6px}",
    ".quick button{border:1px solid #2f5d50;color:#2f5d50;background:#fff;border-radius:14px;padding:4px 10px;cursor:pointer;font-size:13px}",
    ".typing{font-size:12px;color:#56635d;padding:0 14px 4px;background:#f6f7f5;min-height:18px}",
    "form{display:flex;gap:6px;padding:10px;border-top:1px solid #e3e7e2;background:#fff}",
    "textarea{flex:1;resize:none;border:1px solid #cfd6cf;border-radius:10px;padding:8px;font-size:15px;height:42px;max-height:120px}",
    "form button{border:0;background:#2f5d50;color:#fff;border-radius:10px;padding:0 14px;cursor:pointer;font-size:14px}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
    "@media (max-width:480px){.panel{right:0;bottom:0;width:100vw;height:100%;border-radius:0}",
    ".bubble{right:14px;bottom:14px}}",
    "@media (prefers-reduced-motion:no-preference){.panel{transition:opacity .15s}}"
  ].join("");

  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "class") e.className = attrs[k];
      else if (k.slice(0, 2) === "on") e.addEventListener(k.slice(2), attrs[k]);
      else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }

  // Only http(s) links become anchors, built from text nodes: a reply cannot inject markup.
  function linkified(text) {
    var frag = document.createDocumentFragment();
    var re = /https?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)]/g, last = 0, m;
    while ((m = re.exec(text))) {
      frag.appendChild(document.createTextNode(text.slice(last, m.index)));
      frag.appendChild(el("a", { href: m[0], target: "_blank", rel: "noopener noreferrer", text: m[0] }));
      last = m.index + m[0].length;
    }
    frag.appendChild(document.createTextNode(text.slice(last)));
    return frag;
  }

  function safeUrl(u) {
    try {
      var url = new URL(u, base + "/");
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) { return null; }
  }

  var host = el("div", { id: "shopdesk-widget" });
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  if (root.adoptedStyleSheets !== undefined && window.CSSStyleSheet && CSSStyleSheet.prototype.replaceSync) {
    var sheet = new CSSStyleSheet();
    sheet.replaceSync(CSS);
    root.adoptedStyleSheets = [sheet];
  } else {
    root.appendChild(el("style", { text: CSS }));
  }

  var badge = el("span", { class: "badge", hidden: "", "aria-hidden": "true" });
  var bubbleLabel = el("span", { class: "sr", text: t("open") });
  var bubble = el("button", { class: "bubble", type: "button", "aria-expanded": "false", "aria-controls": "sd-panel",
    onclick: function () { setOpen(panel.hidden); } }, [bubbleLabel, badge]);
  var icon = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  icon.setAttribute("viewBox", "0 0 24 24");
  icon.setAttribute("aria-hidden", "true");
  var path = document.createElementNS("http://www.w3.org/2000/svg", "path");
  path.setAttribute("fill", "currentColor");
  path.setAttribute("d", "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z");
  icon.appendChild(path);
  bubble.insertBefore(icon, bubbleLabel);

  var who = el("span", { class: "who", text: t("bot") });
  var title = el("h2", { id: "sd-title" }, [document.createTextNode(t("title")), who]);
  var closeBtn = el("button", { type: "button", "aria-label": t("close"), text: "×", onclick: function () { setOpen(false); } });
  var status = el("div", { class: "status", role: "status" });
  var log = el("div", { class: "log", role: "log", "aria-live": "polite", "aria-label": t("log"), tabindex: "0" });
  var typing = el("div", { class: "typing", "aria-live": "polite" });
  var input = el("textarea", { rows: "1", "aria-label": t("placeholder"), placeholder: t("placeholder"), maxlength: "2000" });
  var form = el("form", { onsubmit: function (e) { e.preventDefault(); send(input.value); } },
    [input, el("button", { type: "submit", text: t("send") })]);
  var panel = el("div", { class: "panel", id: "sd-panel", role: "dialog", "aria-labelledby": "sd-title", hidden: "" },
    [el("header", null, [title, closeBtn]), status, log, typing, form]);
  root.appendChild(bubble);
  root.appendChild(panel);

  input.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(input.value); }
  });
  panel.addEventListener("keydown", function (e) {
    if (e.key === "Escape") { setOpen(false); }
  });

  var unread = 0;
  function setOpen(open) {
    panel.hidden = !open;
    bubble.setAttribute("aria-expanded", String(open));
    bubbleLabel.textContent = open ? t("close") : t("open");
    if (open) {
      unread = 0;
      showBadge();
      input.focus();
      log.scrollTop = log.scrollHeight;
      connect();
    } else {
      bubble.focus();
    }
  }
  function showBadge() {
    badge.hidden = unread === 0;
    badge.textContent = unread > 9 ? "9+" : String(unread);
    bubbleLabel.textContent = (panel.hidden ? t("open") : t("close")) + (unread ? " (" + t("unread", { n: unread }) + ")" : "");
  }
  function noteUnread() {
    if (panel.hidden) { unread++; showBadge(); }
  }

  function scroll() { log.scrollTop = log.scrollHeight; }
  function sys(text) { log.appendChild(el("div", { class: "sys", text: text })); scroll(); }

  function bubbleMsg(role, text, author) {
    var m = el("div", { class: "msg " + role });
    var by = role === "shopper" ? t("you") : role === "agent" ? (author || t("agent")) : t("bot");
    m.appendChild(el("span", { class: "by sr-by", text: by }));
    if (role === "shopper") m.appendChild(document.createTextNode(text));
    else m.appendChild(linkified(text));
    log.appendChild(m);
    scroll();
    return m;
  }

  function money(price, currency) {
    if (price == null) return "";
    try { return new Intl.NumberFormat(locale, { style: "currency", currency: currency || "USD" }).format(price); }
    catch (e) { return String(price); }
  }

  function cards(products) {
    var box = el("div", { class: "cards", role: "list", "aria-label": t("suggestions") });
    products.forEach(function (p) {
      var href = safeUrl(p.url || "#") || "#";
      var img = p.image && safeUrl(p.image);
      box.appendChild(el("a", { class: "card", href: href, role: "listitem" }, [
        img ? el("img", { src: img, alt: "", loading: "lazy", onload: scroll }) : null,
        el("span", { class: "name", text: p.title }),
        el("span", { class: "price", text: money(p.price, p.currency) })
      ]));
    });
    log.appendChild(box);
    // Cards come after the reply: scroll again so they are in view, not below the fold.
    scroll();
  }

  function quick(replies) {
    var box = el("div", { class: "quick" });
    replies.forEach(function (q) {
      box.appendChild(el("button", { type: "button", text: q, onclick: function () { box.remove(); send(q); } }));
    });
    log.appendChild(box);
    scroll();
  }

  function feedback(msgEl, id) {
    var row = el("div", { class: "fb" });
    function vote(helpful, btn) {
      if (!sendFrame({ type: "feedback", message_id: id, helpful: helpful })) return;
      Array.prototype.forEach.call(row.children, function (b) { b.disabled = true; });
      btn.setAttribute("aria-pressed", "true");
      row.appendChild(el("span", { class: "sr", role: "status", text: t("thanks") }));
    }
    // Words, not emoji: not every system has an emoji font.
    var up = el("button", { type: "button", "aria-label": t("helpful"), "aria-pressed": "false", text: t("helpful") });
    var down = el("button", { type: "button", "aria-label": t("unhelpful"), "aria-pressed": "false", text: t("unhelpful") });
    up.addEventListener("click", function () { vote(true, up); });
    down.addEventListener("click", function () { vote(false, down); });
    row.appendChild(up);
    row.appendChild(down);
    msgEl.appendChild(row);
  }

  // --- connection -------------------------------------------------------------------------
  var KEY = "shopdesk.session:" + base;
  var ws = null, ready = false, attempt = 0, timer = null, seq = 0;
  var outbox = []; // {id, text}: sent or waiting, until the server answers for them
  var lastStatus = "bot";
  // The product page the chat was opened from ("Ask about this product"): sent with each
  // message so "is it in stock?" is about it.
  var pageProduct = null;

  function storage() { try { return window.localStorage; } catch (e) { return null; } }
  function token() { var s = storage(); return s ? s.getItem(KEY) : null; }
  function saveToken(v) { var s = storage(); if (s) s.setItem(KEY, v); }

  function connect() {
    if (ws || timer) return;
    status.textContent = attempt ? t("reconnecting") : t("connecting");
    try { ws = new WebSocket(wsUrl); } catch (e) { ws = null; retry(); return; }
    ws.onopen = function () {
      ws.send(JSON.stringify({ type: "hello", session: token(), customer_id: ds.customer || null, locale: locale }));
    };
    ws.onmessage = function (ev) {
      var f;
      try { f = JSON.parse(ev.data); } catch (e) { return; }
      onFrame(f);
    };
    ws.onclose = function () {
      ws = null;
      ready = false;
      typing.textContent = "";
      retry();
    };
    ws.onerror = function () { /* onclose follows */ };
  }
  function retry() {
    attempt++;
    status.textContent = t("reconnecting");
    // Exponential backoff with jitter, capped at 15 s, so a restarted server is not stampeded.
    var delay = Math.min(15000, 500 * Math.pow(2, Math.min(attempt - 1, 5))) * (0.75 + Math.random() / 2);
    timer = setTimeout(function () { timer = null; connect(); }, delay);
  }
  function sendFrame(f) {
    if (!ws || !ready) return false;
    ws.send(JSON.stringify(f));
    return true;
  }

  function send(text) {
    text = (text || "").trim();
    if (!text) return;
    input.value = "";
    var id = "w" + Date.now().toString(36) + "-" + (++seq);
    outbox.push({ id: id, text: text });
    bubbleMsg("shopper", text);
    if (ready) sendFrame(messageFrame(id, text));
    else connect();
  }

  function messageFrame(id, text) {
    var f = { type: "message", id: id, text: text };
    if (pageProduct) f.product = pageProduct;
    return f;
  }

  function setWho(st, agent) {
    lastStatus = st;
    who.textContent = st === "claimed" ? (agent || t("agent")) : t("bot");
  }

  function onFrame(f) {
    switch (f.type) {
      case "welcome":
        ready = true;
        attempt = 0;
        status.textContent = "";
        saveToken(f.session);
        renderHistory(f.history || [], f.status);
        // Messages the server never stored go out again; stored ones are in the history.
        outbox.forEach(function (m) { sendFrame(messageFrame(m.id, m.text)); });
        break;
      case "typing":
        // A person has the chat: the assistant is not the one typing.
        if (lastStatus !== "claimed") typing.textContent = t("typing");
        break;
      case "reply":
        typing.textContent = "";
        done(f.reply_to);
        var m = bubbleMsg("bot", f.text);
        if (f.products && f.products.length) cards(f.products);
        if (f.quick_replies && f.quick_replies.length && !f.escalated) quick(f.quick_replies);
        if (f.escalated) { if (lastStatus === "bot") sys(t("escalated")); setWho("waiting"); }
        else feedback(m, f.id);
        noteUnread();
        break;
      case "ack":
        typing.textContent = "";
        done(f.reply_to);
        break;
      case "agent_joined":
        typing.textContent = "";
        setWho("claimed", f.agent);
        sys(t("joined", { agent: f.agent }));
        noteUnread();
        break;
      case "agent_message":
        typing.textContent = "";
        bubbleMsg("agent", f.text, f.agent);
        noteUnread();
        break;
      case "resolved":
        setWho("bot");
        sys(t("resolved"));
        break;
      case "error":
        typing.textContent = "";
        // A refused message was not stored: it stays on screen and is not sent again by itself.
        outbox = [];
        sys(t("error", { message: f.message }));
        break;
    }
  }
  function done(clientId) {
    outbox = outbox.filter(function (m) { return m.id !== clientId; });
  }

  function renderHistory(history, st) {
    while (log.firstChild) log.removeChild(log.firstChild);
    var answered = {};
    history.forEach(function (h) {
      if (h.reply_to) answered[h.reply_to] = true;
      if (h.role === "shopper" && h.client_id) answered[h.client_id] = true;
      bubbleMsg(h.role, h.text, h.agent || h.author);
    });
    if (!history.length) sys(t("intro"));
    outbox = outbox.filter(function (m) { return !answered[m.id]; });
    outbox.forEach(function (m) { bubbleMsg("shopper", m.text); });
    setWho(st, null);
    if (pageProduct) showAbout();
  }

  // open({product: id, title: "…"}): the shop's "Ask about this product" button.
  var pageTitle = null;
  function showAbout() {
    sys(t("about", { title: pageTitle || pageProduct }));
    quick([t("qStock"), t("qPrice"), t("qSizes")]);
  }
  function openAbout(opts) {
    if (opts && opts.product && opts.product !== pageProduct) {
      pageProduct = String(opts.product);
      pageTitle = opts.title ? String(opts.title) : null;
      // Before the welcome the log is redrawn from the history, which shows it then.
      if (ready) showAbout();
    }
    setOpen(true);
  }
  window.shopdeskWidget = { open: openAbout, close: function () { setOpen(false); } };
  function mount() {
    document.body.appendChild(host);
    // A shopper with a conversation going gets it back (and its unread agent replies) at once.
    if (token()) connect();
  }
  if (document.body) mount(); else document.addEventListener("DOMContentLoaded", mount);
})();
