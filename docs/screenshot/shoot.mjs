// Screenshot of the page for the README, against a server holding the
// synthetic catalogue (catalog.py): upload a photo, create a shopper, view
// and cart two results, then capture the 1280x900 viewport.
//
//   node docs/screenshot/shoot.mjs URL PHOTO OUT.png
//
// Fails (exit 1) on a console error, a page error, a failed request or the
// error banner, so a broken page never becomes the README picture.
import { chromium } from 'playwright-core';

const [url, photo, out] = process.argv.slice(2);
if (!url || !photo || !out) {
  console.error('usage: node shoot.mjs URL PHOTO OUT.png');
  process.exit(2);
}
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const overall = setTimeout(() => {
  console.error('shoot.mjs: no screenshot within 120 s');
  process.exit(1); // Playwright kills the browser it launched
}, 120_000);

const problems = [];
const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ARGS });
try {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 900 },
    deviceScaleFactor: 1,
    colorScheme: 'light',
    serviceWorkers: 'block',
  });
  context.setDefaultTimeout(20_000);
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => { if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`); });

  const seq = (sel) => page.$eval(sel, (el) => Number(el.dataset.seq || 0));
  const rendered = async (sel, prev) => {
    await page.waitForFunction(([s, p]) => {
      const el = document.querySelector(s);
      return el && el.dataset.state !== 'loading' && Number(el.dataset.seq || 0) > p;
    }, [sel, prev]);
    const st = await page.$eval(sel, (el) => el.dataset.state);
    if (st !== 'ready') throw new Error(`${sel} ended in state "${st}"`);
  };

  const res = await page.goto(url, { waitUntil: 'load' });
  if (!res || !res.ok()) throw new Error(`GET ${url}: ${res ? res.status() : 'no answer'}`);
  await page.waitForFunction(() => document.querySelector('#results')?.dataset.state === 'ready'
    && document.querySelector('#stats')?.dataset.catalogSize
    && document.querySelector('#filter-fields select'));

  // A shopper first, so the grid's action buttons record for it.
  let forYou = await seq('#for-you');
  await page.click('#new-shopper');
  await rendered('#for-you', forYou);

  // Search by photo.
  const results = await seq('#results');
  await page.setInputFiles('#photo', photo);
  await rendered('#results', results);
  await page.waitForFunction(() => document.querySelector('#results')?.dataset.queryKind === 'photo');
  const cards = await page.$$('#results .card');
  if (cards.length < 8) throw new Error(`only ${cards.length} results`);

  // View one result and add another to the cart: "Recommended for you" then
  // shows the shopper's list with a reason for each item.
  for (const [i, action] of [[0, 'ACTION_VIEW'], [3, 'ACTION_ADD_TO_CART'], [6, 'ACTION_PURCHASE']]) {
    forYou = await seq('#for-you');
    await cards[i].$eval(`.action[data-action=${action}]`, (b) => b.click());
    await page.waitForFunction(([i, a]) => document.querySelectorAll('#results .card')[i]
      ?.querySelector(`.action[data-action=${a}]`)?.getAttribute('aria-pressed') === 'true', [i, action]);
    await rendered('#for-you', forYou);
  }
  const recs = await page.$$eval('#for-you .rec', (r) => r.length);
  if (!recs) throw new Error('no recommendations for the shopper');

  // Every thumbnail in view loaded, the uploaded photo too.
  await page.waitForFunction(() => {
    const imgs = [...document.querySelectorAll('#results .card img, #for-you img, #query-thumb')];
    return imgs.length > 0 && imgs.every((i) => i.hidden || (i.complete && i.naturalWidth > 0));
  });
  if (await page.isVisible('#error')) {
    throw new Error(`error banner: ${await page.textContent('#error-text')}`);
  }
  if (problems.length) throw new Error(problems.join('\n'));

  // No hover or focus ring in the picture.
  await page.mouse.move(1279, 899);
  await page.evaluate(() => { document.activeElement?.blur(); window.scrollTo(0, 0); });
  await page.waitForTimeout(300); // transitions settle
  await page.screenshot({ path: out, fullPage: false });
  console.log(`screenshot: ${cards.length} results, ${recs} recommendations -> ${out}`);
} catch (e) {
  console.error(`shoot.mjs: ${(e && e.message) || e}`);
  if (problems.length) console.error(problems.join('\n'));
  process.exitCode = 1;
} finally {
  clearTimeout(overall);
  await browser.close();
}
