// The operator dashboard in a real browser (Debian's Chromium, driven by playwright-core):
// log in, read the overview, find a vehicle, create and start a campaign in the form, watch
// its progress bars move as the vehicles install, pause it with the button, read the
// security events. A screenshot of each page goes to OUT. `fleet-sim dashboard` starts the
// fleet, runs this, and checks the pause with `director campaign show`.
//
// Environment: DIRECTOR_URL, DIRECTOR_TOKEN, OUT, CAMPAIGN, IMAGE, GROUP, VEHICLES (the
// fleet's size), SEARCH (part of a VIN), CHROMIUM (default /usr/bin/chromium).
// Prints one JSON line of what it saw; exits non-zero at the first expectation that fails.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const url = env("DIRECTOR_URL");
const out = env("OUT");
const campaign = env("CAMPAIGN");
const vehicles = Number(env("VEHICLES"));
mkdirSync(out, { recursive: true });

const LIMIT = 60_000;
const seen = { pages: [], progress: [] };

function expect(condition, what) {
  if (!condition) throw new Error(`expected ${what}`);
}

const browser = await chromium.launch({
  executablePath: env("CHROMIUM", "/usr/bin/chromium"),
  headless: true,
  // As root in CI, on a machine with no route out: no sandbox, no background traffic.
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
try {
  // The fleet's throwaway CA is not in the browser's store: the test accepts the Director's
  // certificate (the CLI and every other client in the run verify it).
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // Script errors and policy violations fail the run; a refused request (the wrong token's
  // 401, the browser's own favicon probe) is the server answering, not the page failing.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) errors.push(m.text());
  });
  page.on("dialog", async (d) => {
    errors.push(`a dialog opened: ${d.message()}`);
    await d.dismiss();
  });
  const shot = async (name) => {
    await page.screenshot({ path: join(out, `${name}.png`), fullPage: true });
    seen.pages.push(name);
  };

  // Log in: a wrong token first, then the operator's.
  await page.goto(url + "/ui", { timeout: LIMIT });
  await page.fill("#token", "dat_not_a_token");
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("#error:not([hidden])", { timeout: LIMIT });
  expect((await page.textContent("#error")).includes("Log in refused"), "a wrong token to be refused");
  await shot("login-refused");
  await page.fill("#token", env("DIRECTOR_TOKEN"));
  await page.click("#login-form button[type=submit]");
  await page.waitForSelector("[data-testid=vehicles] .value", { timeout: LIMIT });
  const count = Number(await page.textContent("[data-testid=vehicles] .value"));
  expect(count === vehicles, `the overview to count ${vehicles} vehicles, not ${count}`);
  await shot("overview");

  // Vehicles: search, then one vehicle's page.
  await page.click("nav a[data-page=vehicles]");
  await page.waitForSelector("#vehicle-search", { timeout: LIMIT });
  const unsearched = await page.getAttribute("main", "data-loaded");
  await page.fill("#vehicle-search", env("SEARCH"));
  await page.press("#vehicle-search", "Enter");
  await page.waitForFunction(() => location.hash.includes("search="), null, { timeout: LIMIT });
  await page.waitForFunction((before) => document.querySelector("main").dataset.loaded !== before, unsearched, {
    timeout: LIMIT,
  });
  await page.waitForSelector("main table tbody tr a", { timeout: LIMIT });
  const found = await page.$$eval("main table tbody tr a", (links) => links.map((a) => a.textContent));
  expect(found.length > 0 && found.every((v) => v.includes(env_search())), `the search to list only matching VINs: ${found}`);
  await shot("vehicles");
  await page.click("main table tbody tr a");
  await page.waitForSelector("text=ECUs", { timeout: LIMIT });
  await shot("vehicle");
  // A vehicle whose attribute holds markup (set through the API by whoever may): shown as
  // the text it is, and nothing in it runs.
  const markup = env("MARKUP");
  await page.goto(url + "/ui#/vehicle/" + encodeURIComponent(env("MARKUP_VIN")), { timeout: LIMIT });
  // Only the hash changes, so the previous vehicle's page (which has "Attributes" too) stays
  // until the new one is drawn: wait for the attribute's cell itself (never there if the
  // markup were made into elements).
  await page.waitForFunction(
    (text) => [...document.querySelectorAll("main table tbody td")].some((td) => td.textContent === text),
    markup,
    { timeout: LIMIT },
  );
  const cells = await page.$$eval("main table tbody td", (tds) => tds.map((td) => td.textContent));
  expect(cells.includes(markup), `the attribute shown as text: ${cells}`);
  expect((await page.$$("main img")).length === 0, "no element made from the attribute");
  await shot("vehicle-markup");

  // A campaign made in the form, started, watched.
  await page.click("nav a[data-page=campaigns]");
  await page.waitForSelector("#new-campaign", { timeout: LIMIT });
  await page.fill("#c-name", campaign);
  await page.fill("#c-images", env("IMAGE"));
  await page.selectOption("#c-group", env("GROUP"));
  await page.fill("#c-waves", "50%,100%");
  await page.fill("#c-ratio", "50%");
  await page.fill("#c-soak", "600");
  await shot("campaign-form");
  await page.click("#c-create");
  await page.waitForSelector(`h1:has-text("${campaign}")`, { timeout: LIMIT });
  const installed = async () => Number(await page.getAttribute(".bar", "data-installed"));
  const picked = Number(await page.getAttribute(".bar", "data-vehicles"));
  seen.progress.push(await installed());
  await shot("campaign-started");
  // The page refreshes itself every 2 s; the wave's vehicles install as they poll.
  const deadline = Date.now() + 4 * LIMIT;
  while ((await installed()) < picked) {
    expect(Date.now() < deadline, `the first wave's ${picked} vehicles to install`);
    await page.waitForFunction(
      (before) => document.querySelector("main").dataset.loaded !== before,
      await page.getAttribute("main", "data-loaded"),
      { timeout: LIMIT },
    );
    const now = await installed();
    if (now !== seen.progress[seen.progress.length - 1]) seen.progress.push(now);
  }
  expect(seen.progress.length > 1, `the progress bar to move (saw ${seen.progress})`);
  await shot("campaign-running");

  await page.click("#action-pause");
  await page.waitForSelector("[data-state=paused]", { timeout: LIMIT });
  expect((await page.textContent("#campaign-reason")).includes("pause from the dashboard"), "the pause's reason on the page");
  await shot("campaign-paused");

  await page.click("nav a[data-page=campaigns]");
  await page.waitForSelector(`main table a:has-text("${campaign}")`, { timeout: LIMIT });
  await shot("campaigns");

  // Security events, filtered.
  await page.click("nav a[data-page=events]");
  await page.waitForSelector("#f-kind", { timeout: LIMIT });
  await shot("security-events");
  const unfiltered = await page.getAttribute("main", "data-loaded");
  await page.fill("#f-kind", "vehicle_auth");
  await page.click("main form button[type=submit]");
  await page.waitForFunction(() => location.hash.includes("kind=vehicle_auth"), null, { timeout: LIMIT });
  await page.waitForFunction((before) => document.querySelector("main").dataset.loaded !== before, unfiltered, {
    timeout: LIMIT,
  });
  const kinds = await page.$$eval("main table tbody tr td:nth-child(2)", (cells) => cells.map((c) => c.textContent));
  expect(kinds.length > 0 && kinds.every((k) => k.startsWith("vehicle_auth")), `only vehicle_auth events after filtering, saw ${kinds}`);

  // The fleet at a glance once a campaign ran.
  await page.click("nav a[data-page=overview]");
  await page.waitForSelector("[data-testid=campaigns-paused] .value", { timeout: LIMIT });
  expect((await page.textContent("[data-testid=campaigns-paused] .value")) === "1", "the overview to count the paused campaign");
  await shot("overview-after");

  expect(errors.length === 0, `no script errors, saw ${errors}`);
  console.log(JSON.stringify(seen));
} finally {
  await browser.close();
}

function env_search() {
  return process.env.SEARCH;
}
