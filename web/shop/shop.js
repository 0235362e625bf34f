/* The demo storefront: the catalog from /v1/products, a product page at /products/ID with
 * similar products from the recommender. Catalog text is set with textContent. */
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) {
      if (k === "text") e.textContent = attrs[k]; else e.setAttribute(k, attrs[k]);
    }
    (kids || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }
  function money(p) {
    if (p.price == null) return "";
    try { return new Intl.NumberFormat("en", { style: "currency", currency: p.currency || "USD" }).format(p.price); }
    catch (e) { return String(p.price); }
  }
  function card(p) {
    return el("li", null, [el("a", { href: "/products/" + encodeURIComponent(p.id) }, [
      el("img", { src: p.image || "", alt: "", loading: "lazy" }),
      el("span", { class: "t", text: p.title }),
      el("span", { class: "p" + (p.in_stock === false ? " out" : ""), text: p.in_stock === false ? money(p) + " · sold out" : money(p) })
    ])]);
  }
  function show(list, heading) {
    $("heading").textContent = heading;
    var grid = $("grid");
    while (grid.firstChild) grid.removeChild(grid.firstChild);
    list.forEach(function (p) { grid.appendChild(card(p)); });
  }

  var params = new URLSearchParams(location.search);
  var cat = params.get("category");
  var m = location.pathname.match(/^\/products\/([^/]+)$/);

  function load(tries) {
    fetch("/v1/products").then(function (r) {
      if (r.status === 503 && tries < 60) { $("empty").hidden = false; setTimeout(function () { load(tries + 1); }, 1000); return null; }
      return r.json();
    }).then(function (j) {
      if (!j) return;
      $("empty").hidden = true;
      var products = j.products || [];
      var cats = [];
      products.forEach(function (p) { if (p.category && cats.indexOf(p.category) < 0) cats.push(p.category); });
      var nav = $("cats");
      cats.forEach(function (c) {
        var a = el("a", { href: "/?category=" + encodeURIComponent(c), text: c });
        if (c === cat) a.setAttribute("aria-current", "page");
        nav.appendChild(a);
      });
      if (m) return product(products, decodeURIComponent(m[1]));
      show(cat ? products.filter(function (p) { return p.category === cat; }) : products, cat ? cat.charAt(0).toUpperCase() + cat.slice(1) : "New this season");
    });
  }

  function product(products, id) {
    var p = products.find(function (x) { return x.id === id; });
    var d = $("detail");
    if (!p) { show([], "We could not find that product"); return; }
    document.title = p.title + " — Juniper & Pine";
    d.hidden = false;
    d.appendChild(el("img", { src: p.image || "", alt: p.title }));
    d.appendChild(el("div", null, [
      el("h1", { text: p.title }),
      el("p", { class: "price", text: money(p) }),
      el("p", { text: p.in_stock === false ? "Sold out for now. Ask the assistant when it is back." : "In stock. Free returns within 30 days." }),
      el("button", { type: "button", text: "Ask about this product" })
    ]));
    d.querySelector("button").addEventListener("click", function () {
      if (window.shopdeskWidget) window.shopdeskWidget.open({ product: p.id, title: p.title });
    });
    fetch("/v1/products/" + encodeURIComponent(id) + "/similar?k=8").then(function (r) { return r.ok ? r.json() : { items: [] }; })
      .then(function (j) { show(j.items.map(function (s) { return Object.assign({ in_stock: true }, s); }), "Shoppers also looked at"); });
  }
  load(0);
})();
