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
