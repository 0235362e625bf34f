// Starts the real `shopdesk serve` on the demo shop and a headless Chromium for the browser tests.
import { spawn, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

export const REPO = path.resolve(import.meta.dirname, "../..");
export const BIN = process.env.SHOPDESK_BIN || path.join(REPO, "target/debug/shopdesk");
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const AGENT = "Alex";
export const AGENT_TOKEN = "web-test-agent-token-0123456789";
export const SHOTS = process.env.SHOPDESK_SCREENSHOTS || path.join(REPO, "target/web-screenshots");

// A missing browser or binary is a failure with the fix in the message, never a skipped test.
export function checkRequirements() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: install it (apt-get install chromium) or set CHROMIUM=/path`);
  }
  if (!fs.existsSync(BIN)) {
    throw new Error(`${BIN} not found: build it first (cargo build) or set SHOPDESK_BIN`);
  }
}

let shop = null;
/** The demo shop's FAQ index and recommender, built once by the real CLI into a temp dir. */
export function demoShop() {
  if (shop) return shop;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "shopdesk-web-"));
  const run = (args) => execFileSync(BIN, args, { cwd: REPO, stdio: ["ignore", "ignore", "pipe"] });
  run(["index", "build", "--faq", "index/demo-faq.csv", "--index-dir", path.join(dir, "faq")]);
  run(["recommend", "train", "--interactions", "index/interactions.csv", "--catalog", "index/catalog.csv",
    "--no-loss", "--out", path.join(dir, "recommend")]);
  shop = { dir, index: path.join(dir, "faq"), recommend: path.join(dir, "recommend") };
  return shop;
}

export function tempDb() {
  return path.join(fs.mkdtempSync(path.join(os.tmpdir(), "shopdesk-web-db-")), "shop.db");
}

/** Starts `shopdesk serve`; resolves once /readyz answers 200. */
export async function startServer({ db, port = 0 }) {
  const s = demoShop();
  const sha = createHash("sha256").update(AGENT_TOKEN).digest("hex");
  const child = spawn(BIN, ["serve", "--host", "127.0.0.1", "--port", String(port),
    "--database-url", `sqlite://${db}`, "--index-dir", s.index, "--recommend-dir", s.recommend,
    "--agent", `${AGENT}:${sha}`, "--no-rate-limits", "--nlu-workers", "1"],
  { cwd: REPO, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
  let log = "";
  child.stderr.on("data", (d) => { log += d; });
  const url = await new Promise((resolve, reject) => {
    let out = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), 120_000);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/[\d.:]+)/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`server exited (${code}):\n${log}`)); });
  });
  const deadline = Date.now() + 120_000;
  for (;;) {
    const r = await fetch(`${url}/readyz`).catch(() => null);
    if (r && r.status === 200) break;
    if (Date.now() > deadline) throw new Error(`server not ready:\n${log}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  return {
    url,
    port: Number(new URL(url).port),
    log: () => log,
    /** SIGTERM: a graceful stop (open sockets are closed with 1012); SIGKILL: a crash. */
    async stop(signal = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const t = setTimeout(() => child.kill("SIGKILL"), 15_000);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

export async function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
}

/** A page that fails the test on any page error, console error or dialog (alert). */
export async function watchedPage(context, problems) {
  const page = await context.newPage();
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    // The widget's reconnect attempts while a server is down log failed socket connections.
    if (m.type() === "error" && !/WebSocket|ERR_CONNECTION_REFUSED|Failed to load resource/.test(m.text())) {
      problems.push(`console error: ${m.text()}`);
    }
  });
  page.on("dialog", async (d) => { problems.push(`dialog opened: ${d.type()} ${d.message()}`); await d.dismiss(); });
  return page;
}

export function screenshotPath(name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  return path.join(SHOTS, name);
}
