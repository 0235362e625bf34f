// Browser tests: the demo shop with its chat widget and the agent console, in Debian's Chromium
// driven by Playwright, against the real server. Run by `make test-web` (part of `make test`).
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  AGENT, AGENT_TOKEN, checkRequirements, launchBrowser, screenshotPath, startServer, tempDb, watchedPage,
} from "./harness.mjs";

let browser;
before(async () => {
  checkRequirements();
  browser = await launchBrowser();
});
after(async () => { await browser?.close(); });

// The widget lives in an open shadow root: Playwright's CSS locators pierce it.
const W = {
  bubble: "#shopdesk-widget >> .bubble",
  panel: "#shopdesk-widget >> .panel",
  input: "#shopdesk-widget >> textarea",
  log: "#shopdesk-widget >> .log",
  badge: "#shopdesk-widget >> .badge",
  status: "#shopdesk-widget >> .status",
};

async function ask(page, text) {
  await page.locator(W.input).fill(text);
  await page.locator(W.input).press("Enter");
}

async function signIn(page, url) {
  await page.goto(`${url}/console`);
  await page.locator("#token").fill(AGENT_TOKEN);
  await page.locator("#signin-form button[type=submit]").click();
  await page.locator("#agent-name").filter({ hasText: AGENT }).waitFor();
  await page.locator("#live").filter({ hasText: /^live$/ }).waitFor();
}

test("shopper asks a question and gets a reply with product cards; keyboard and phone layout work", async () => {
  const server = await startServer({ db: tempDb() });
  const problems = [];
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  try {
    const page = await watchedPage(context, problems);
    await page.goto(server.url + "/");
    // The storefront lists the catalog.
    await page.locator("#grid li").first().waitFor();
    assert.ok(await page.locator("#grid li").count() >= 10);

    // Keyboard: the bubble is a button; Enter opens the panel and focuses the input.
    await page.locator(W.bubble).focus();
    await page.keyboard.press("Enter");
    await page.locator(W.panel).waitFor({ state: "visible" });
    assert.equal(await page.locator(W.bubble).getAttribute("aria-expanded"), "true");
    assert.equal(await page.evaluate(() => document.querySelector("#shopdesk-widget").shadowRoot.activeElement?.tagName), "TEXTAREA");

    // A greeting: small talk with quick replies and popular products.
    await ask(page, "Hello!");
    await page.locator(`${W.log} >> .msg.bot`).first().waitFor();
    assert.ok(await page.locator(`${W.log} >> .quick button`).count() > 0, "quick replies");
    // A product by name: an answer with cards for it.
    await ask(page, "Do you have a linen shirt?");
    await page.locator(`${W.log} >> .msg.bot`).nth(1).waitFor();
    const card = page.locator(`${W.log} >> .cards`).last().locator(".card").first();
    await card.waitFor();
    const href = await card.getAttribute("href");
    assert.match(href, /\/products\/jp-\d{3}$/);
    assert.match(await card.locator(".price").textContent(), /\$\d+/);
    assert.ok(await card.locator("img").evaluate((img) => img.complete && img.naturalWidth > 0), "product picture loads");
    // The newest cards and quick replies are scrolled into view, not left below the log's edge.
    await page.waitForFunction(() => {
      const log = document.querySelector("#shopdesk-widget").shadowRoot.querySelector(".log");
      const cards = log.querySelectorAll(".cards");
      const last = cards[cards.length - 1];
      const a = log.getBoundingClientRect(), b = last.getBoundingClientRect();
      return b.top >= a.top - 1 && b.bottom <= a.bottom + 1;
    }, null, { timeout: 5000 });
    // Feedback on an answer.
    await page.locator(`${W.log} >> .fb button[aria-label="Helpful"]`).first().click();
    await page.locator(`${W.log} >> .fb button[aria-pressed=true]`).first().waitFor();
    await page.screenshot({ path: screenshotPath("widget.png") });

    // Escape closes and gives focus back to the bubble.
    await page.locator(W.input).press("Escape");
    await page.locator(W.panel).waitFor({ state: "hidden" });
    assert.equal(await page.evaluate(() => document.querySelector("#shopdesk-widget").shadowRoot.activeElement?.className), "bubble");

    // The conversation follows the shopper to the next page (the session token is kept).
    await page.goto(server.url + "/products/jp-001");
    await page.locator(W.bubble).click();
    await page.locator(`${W.log} >> .msg.shopper`).filter({ hasText: "linen shirt" }).waitFor();
    assert.equal(await page.locator(`${W.log} >> .msg.shopper`).count(), 2);

    // "Ask about this product": the widget says which product, offers questions about it, and
    // "Is it in stock?" is answered for that product.
    await page.locator("#detail button").click();
    await page.locator(`${W.log} >> .sys`).filter({ hasText: "Asking about: Linen Shirt" }).waitFor();
    await page.locator(`${W.log} >> .quick button`).filter({ hasText: "Is it in stock?" }).last().click();
    const stock = page.locator(`${W.log} >> .msg.bot`).filter({ hasText: /Linen Shirt/i }).filter({ hasText: /stock/i });
    await stock.waitFor();
    await page.locator(W.input).press("Escape");

    // Phone: the open panel fills the screen.
    const phone = await browser.newContext({ viewport: { width: 375, height: 667 }, isMobile: true, hasTouch: true });
    const mp = await watchedPage(phone, problems);
    await mp.goto(server.url + "/products/jp-001");
    await mp.locator("#detail h1").filter({ hasText: "Linen Shirt" }).waitFor();
    await mp.locator(W.bubble).tap();
    const box = await mp.locator(W.panel).boundingBox();
    assert.equal(Math.round(box.width), 375);
    assert.ok(box.height >= 600, `panel height ${box.height}`);
    await mp.screenshot({ path: screenshotPath("widget-phone.png") });
    await phone.close();
    assert.deepEqual(problems, []);
  } finally {
    await context.close();
    await server.stop();
  }
});

test("an escalation reaches the console live; the agent claims, replies and resolves; the shopper sees it", async () => {
  const server = await startServer({ db: tempDb() });
  const problems = [];
  const shopperCtx = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  const agentCtx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  try {
    const agent = await watchedPage(agentCtx, problems);
    await signIn(agent, server.url);
    assert.equal(await agent.locator("#queue li").count(), 0);

    const shopper = await watchedPage(shopperCtx, problems);
    await shopper.goto(server.url + "/");
    await shopper.locator(W.bubble).click();
    await ask(shopper, "Where is my order 4451-23? It has not arrived.");
    await shopper.locator(`${W.log} >> .msg.bot`).first().waitFor();
    await ask(shopper, "This is the third time my refund is late, I am furious. I want to talk to a real person now!");
    await shopper.locator(`${W.log} >> .sys`).filter({ hasText: "A person from our team will join" }).waitFor();

    // The console's queue updates from the live stream, without a reload.
    const item = agent.locator("#queue li").first();
    await item.waitFor();
    await item.locator(".badge.negative").waitFor();
    await item.click();
    await agent.locator("#messages li.shopper").filter({ hasText: "furious" }).waitFor();
    await agent.locator("#messages li.shopper .badge").first().waitFor();
    assert.ok(await agent.locator("#trend circle").count() >= 2, "sentiment trend drawn");
    assert.match(await agent.locator("#slots").textContent(), /4451-23/);

    await agent.locator("#claim").click();
    await shopper.locator(`${W.log} >> .sys`).filter({ hasText: `${AGENT} joined the chat` }).waitFor();
    // A person has the chat: the shopper's next message shows no "assistant is typing".
    await ask(shopper, "ok, thank you");
    await agent.locator("#messages li.shopper").filter({ hasText: "ok, thank you" }).waitFor();
    await shopper.waitForTimeout(300);
    assert.equal((await shopper.locator("#shopdesk-widget >> .typing").textContent()).trim(), "", "no typing line while an agent has the chat");

    // The shopper closes the chat; the agent's reply raises the unread badge.
    await shopper.locator(W.bubble).click();
    await shopper.locator(W.panel).waitFor({ state: "hidden" });
    await agent.locator("#reply").fill("Hi, I'm Alex. I am sorry about the refund, I'm on it now.");
    await agent.locator("#send").click();
    await shopper.locator(W.badge).filter({ hasText: "1" }).waitFor();
    await shopper.locator(W.bubble).click();
    await shopper.locator(`${W.log} >> .msg.agent`).filter({ hasText: "I'm on it now" }).waitFor();
    assert.equal(await shopper.locator(W.badge).isHidden(), true);

    // Inline relabel of the shopper's message.
    const msg = agent.locator("#messages li.shopper").filter({ hasText: "furious" });
    await msg.locator("button", { hasText: "Relabel" }).click();
    await msg.locator("select[aria-label=intent]").selectOption("get_refund");
    await msg.locator("button", { hasText: "Save" }).click();
    await agent.locator("#messages li.shopper").filter({ hasText: "furious" }).locator(".badge.fixed").filter({ hasText: "→ get_refund" }).waitFor();
    await agent.locator("#filter").selectOption("all");
    await agent.locator("#queue li").first().waitFor();
    await agent.screenshot({ path: screenshotPath("console.png") });
    await shopper.screenshot({ path: screenshotPath("widget-agent.png") });

    await agent.locator("#resolve").click();
    await shopper.locator(`${W.log} >> .sys`).filter({ hasText: "marked as solved" }).waitFor();
    await agent.locator("#chat-meta").filter({ hasText: "status resolved" }).waitFor();
    assert.deepEqual(problems, []);
  } finally {
    await shopperCtx.close();
    await agentCtx.close();
    await server.stop();
  }
});

/** A signed-in shopper: the shop's widget tag carries `data-customer` (set before the widget runs). */
async function signedInShopper(ctx, customer) {
  await ctx.addInitScript((cid) => {
    new MutationObserver((_, obs) => {
      const s = document.querySelector("script[src*='widget.js']");
      if (s) { s.dataset.customer = cid; obs.disconnect(); }
    }).observe(document, { childList: true, subtree: true });
  }, customer);
}

test("the console: customer history, a canned reply edited and sent, an internal note the shopper never sees, search", async () => {
  const server = await startServer({ db: tempDb() });
  const problems = [];
  const customer = "c-web-0042";
  const earlierCtx = await browser.newContext();
  const shopperCtx = await browser.newContext({ viewport: { width: 1000, height: 800 } });
  const agentCtx = await browser.newContext({ viewport: { width: 1280, height: 760 } });
  // Its own words, not "warehouse": the bot's delivery answer says that too.
  const note = "Checked with the warehouse: refund approved, label sent by e-mail.";
  try {
    await signedInShopper(earlierCtx, customer);
    await signedInShopper(shopperCtx, customer);
    // An earlier conversation of the same customer (another browser: a new conversation).
    const earlier = await watchedPage(earlierCtx, problems);
    await earlier.goto(server.url + "/");
    await earlier.locator(W.bubble).click();
    await ask(earlier, "Where is my order 4451-23?");
    await earlier.locator(`${W.log} >> .msg.bot`).first().waitFor();
    await ask(earlier, "I want to talk to a real person");
    await earlier.locator(`${W.log} >> .sys`).filter({ hasText: "A person from our team will join" }).waitFor();

    // Today's conversation.
    const shopper = await watchedPage(shopperCtx, problems);
    await shopper.goto(server.url + "/");
    await shopper.locator(W.bubble).click();
    await ask(shopper, "Hello");
    await shopper.locator(`${W.log} >> .msg.bot`).first().waitFor();
    // A transcript longer than the pane, to see where its newest message ends up.
    const questions = ["How long does delivery take?", "Do you ship to Canada?", "What is your return policy?",
      "Can I pay with PayPal?", "What are your opening hours?"];
    for (const [i, q] of questions.entries()) {
      await ask(shopper, q);
      await shopper.locator(`${W.log} >> .msg.bot`).nth(i + 1).waitFor();
    }
    await ask(shopper, "The linen shirt I got has a hole in it. I want to talk to a real person");
    await shopper.locator(`${W.log} >> .sys`).filter({ hasText: "A person from our team will join" }).waitFor();

    const agent = await watchedPage(agentCtx, problems);
    await signIn(agent, server.url);
    // The queue names the customer and previews what the shopper wrote (not the bot's text).
    const item = agent.locator("#queue li").filter({ hasText: "has a hole" });
    await item.waitFor();
    assert.match(await item.textContent(), new RegExp(customer));
    assert.equal(await agent.locator("#queue li").filter({ hasText: "Anonymous shopper" }).count(), 0);
    assert.doesNotMatch(await agent.locator("#queue").textContent(), /A person from our team/);
    await item.locator("button").click();
    await agent.locator("#messages li.shopper").filter({ hasText: "has a hole" }).waitFor();

    // Customer history beside the transcript: the earlier conversation, its first message.
    const past = agent.locator("#history-list li").filter({ hasText: "Where is my order 4451-23?" });
    await past.waitFor();
    assert.equal(await agent.locator("#history-list li").count(), 1);

    await agent.locator("#claim").click();
    await agent.locator("#chat-meta").filter({ hasText: "status claimed" }).waitFor();
    // Claimed chats stay in the default list.
    await agent.locator("#queue li").filter({ hasText: "has a hole" }).locator(".badge.status-claimed").waitFor();

    // The newest message sits above the reply box, not under it; claim/resolve stay in view.
    const last = await agent.locator("#messages li").last().boundingBox();
    const composer = await agent.locator(".composer").boundingBox();
    assert.ok(last.y + last.height <= composer.y + 1, `last message ${JSON.stringify(last)} vs composer ${JSON.stringify(composer)}`);
    await agent.locator("#messages").evaluate((ol) => { ol.scrollTop = 0; });
    const resolveBox = await agent.locator("#resolve").boundingBox();
    assert.ok(resolveBox && resolveBox.y >= 0 && resolveBox.y + resolveBox.height <= 760, `resolve at ${JSON.stringify(resolveBox)}`);
    assert.ok(await agent.locator("#resolve").isVisible());

    // A canned reply goes into the reply box; the agent edits it and sends it.
    await agent.locator("#canned").selectOption({ label: "Refund issued" });
    const inserted = await agent.locator("#reply").inputValue();
    assert.match(inserted, /issued your refund for order \[order number\]/);
    await agent.locator("#reply").fill(inserted.replace("[order number]", "JP-44512"));
    await agent.locator("#send").click();
    await shopper.locator(`${W.log} >> .msg.agent`).filter({ hasText: "issued your refund for order JP-44512" }).waitFor();
    await agent.locator("#messages li.agent").filter({ hasText: "JP-44512" }).waitFor();
    assert.equal(await agent.locator("#reply").inputValue(), "");

    // An internal note: shown in the console as internal, never in the widget.
    await agent.locator("#note").fill(note);
    await agent.locator("#add-note").click();
    const noteLi = agent.locator("#messages li.note").filter({ hasText: note });
    await noteLi.waitFor();
    assert.match(await noteLi.locator(".who").textContent(), /Internal note · Alex/);
    assert.equal(await agent.locator("#note").inputValue(), "");
    await agent.waitForTimeout(500);
    assert.doesNotMatch(await shopper.locator(W.log).textContent(), /refund approved, label sent/);
    // Nor after the widget reloads the conversation from the server.
    await shopper.reload();
    await shopper.locator(W.bubble).click();
    await shopper.locator(`${W.log} >> .msg.agent`).filter({ hasText: "JP-44512" }).waitFor();
    assert.doesNotMatch(await shopper.locator(W.log).textContent(), /refund approved, label sent/);
    await agent.screenshot({ path: screenshotPath("console-tools.png") });

    // Search: a hit in the earlier conversation opens it.
    await agent.locator("#search").fill("4451-23");
    await agent.locator("#search-form button[type=submit]").click();
    const hit = agent.locator("#search-results li").filter({ hasText: "Where is my order 4451-23?" }).first();
    await hit.waitFor();
    await hit.locator("button").click();
    await agent.locator("#messages li.shopper").filter({ hasText: "Where is my order 4451-23?" }).waitFor();
    assert.equal(await agent.locator("#messages li.note").count(), 0, "notes belong to their own conversation");
    await agent.locator("#search-clear").click();
    await agent.locator("#queue li").first().waitFor();
    assert.deepEqual(problems, []);
  } finally {
    await earlierCtx.close();
    await shopperCtx.close();
    await agentCtx.close();
    await server.stop();
  }
});

test("markup in a shopper message is shown as text in the console and the widget, and runs nothing", async () => {
  const server = await startServer({ db: tempDb() });
  const problems = [];
  const shopperCtx = await browser.newContext();
  const agentCtx = await browser.newContext();
  const payload = "<img src=x onerror=alert(1)> I want to talk to a person";
  try {
    const shopper = await watchedPage(shopperCtx, problems);
    await shopper.goto(server.url + "/");
    await shopper.locator(W.bubble).click();
    await ask(shopper, payload);
    await shopper.locator(`${W.log} >> .msg.bot`).first().waitFor();
    assert.equal(await shopper.locator(`${W.log} >> .msg.shopper`).first().evaluate((e) => e.lastChild.textContent), payload);
    assert.equal(await shopper.evaluate(() => document.querySelector("#shopdesk-widget").shadowRoot.querySelectorAll(".log img").length), 0);

    const agent = await watchedPage(agentCtx, problems);
    await signIn(agent, server.url);
    await agent.locator("#queue li").first().click();
    const li = agent.locator("#messages li.shopper").first();
    await li.waitFor();
    assert.equal(await li.locator(".text").textContent(), payload);
    assert.equal(await agent.locator("#messages img, #queue img").count(), 0);
    // Give a would-be onerror handler time to fire.
    await agent.waitForTimeout(500);
    assert.deepEqual(problems, []);
  } finally {
    await shopperCtx.close();
    await agentCtx.close();
    await server.stop();
  }
});

test("the widget reconnects after the server restarts and the conversation goes on", async () => {
  const db = tempDb();
  let server = await startServer({ db });
  const port = server.port;
  const problems = [];
  const ctx = await browser.newContext();
  try {
    const page = await watchedPage(ctx, problems);
    await page.goto(server.url + "/");
    await page.locator(W.bubble).click();
    await ask(page, "Where is my order 4451-23?");
    await page.locator(`${W.log} >> .msg.bot`).first().waitFor();

    // A graceful restart closes the socket (1012); the widget says so and retries with backoff.
    const stopped = await server.stop("SIGTERM");
    assert.equal(stopped.code, 0, "graceful shutdown with an open widget socket");
    await page.locator(W.status).filter({ hasText: "Reconnecting" }).waitFor();
    // A message typed while the server is down is kept and sent after the reconnect.
    await ask(page, "Can I pay with PayPal?");
    server = await startServer({ db, port });
    await page.locator(`${W.log} >> .msg.bot`).nth(1).waitFor({ timeout: 30_000 });
    // The history came back from the server once: each shopper message shown exactly once.
    const shopperTexts = await page.locator(`${W.log} >> .msg.shopper`).allTextContents();
    assert.equal(shopperTexts.filter((t) => t.includes("4451-23")).length, 1, shopperTexts.join(" | "));
    assert.equal(shopperTexts.filter((t) => t.includes("PayPal")).length, 1, shopperTexts.join(" | "));

    // A crash (kill -9) too: the widget comes back to the same conversation.
    await server.stop("SIGKILL");
    await page.locator(W.status).filter({ hasText: "Reconnecting" }).waitFor();
    server = await startServer({ db, port });
    await ask(page, "Thanks!");
    await page.locator(`${W.log} >> .msg.bot`).nth(2).waitFor({ timeout: 30_000 });
    const again = await page.locator(`${W.log} >> .msg.shopper`).allTextContents();
    assert.equal(again.length, 3, again.join(" | "));
    assert.deepEqual(problems, []);
  } finally {
    await ctx.close();
    await server.stop();
  }
});
