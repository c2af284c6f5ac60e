#!/usr/bin/env node
// Headless-browser test of lookbook's web page, against a running server
// whose catalogue already holds a few hundred products with thumbnails.
//
//   node tests/browser/page.test.mjs --url http://127.0.0.1:PORT \
//     --photo /path/to/a.jpg --out OUTDIR [--token TOKEN] [--timeout 120]
//
// Drives Debian's Chromium (/usr/bin/chromium, or $CHROMIUM) through
// playwright-core; see tests/browser/setup.sh. Prints one line per check
// and a closing "N passed, N failed" line; exits 0 only if every check
// passed. Enforces its own overall timeout, so it can never hang.
//
// Markup it relies on (ui/index.html, ui/app.js): #photo (file input),
// select[data-key="<attribute>"] filters whose options carry data-count,
// #diversity (checkbox), #results (data-state="loading|ready|error" and a
// data-seq render counter) holding .card[data-product-id][data-article-type]
// with a .card-open button (.name, .type) and .action[data-action=...]
// buttons, #results-heading, #new-shopper, #shopper-id, #forget, and
// #for-you (same data-state/data-seq) holding .rec[data-product-id] items
// with a .reason text.
import fs from 'node:fs';
import path from 'node:path';
import process from 'node:process';
import { chromium } from 'playwright-core';

// ------------------------------------------------------------ arguments

function parseArgs(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--')) throw new Error(`unexpected argument ${a}`);
    const eq = a.indexOf('=');
    if (eq > 0) {
      out[a.slice(2, eq)] = a.slice(eq + 1);
    } else {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      out[a.slice(2)] = argv[++i];
    }
  }
  return out;
}

let args;
try {
  args = parseArgs(process.argv.slice(2));
  for (const need of ['url', 'photo', 'out']) if (!args[need]) throw new Error(`--${need} is required`);
  if (!fs.existsSync(args.photo)) throw new Error(`--photo ${args.photo} does not exist`);
} catch (e) {
  console.error(`page.test.mjs: ${e.message}`);
  console.error('usage: node tests/browser/page.test.mjs --url http://127.0.0.1:PORT --photo a.jpg --out DIR [--token T] [--timeout SECONDS]');
  process.exit(2);
}

const BASE = new URL(args.url);
const ORIGIN = BASE.origin;
const PHOTO = path.resolve(args.photo);
const OUT = path.resolve(args.out);
const TOKEN = args.token || '';
const OVERALL_MS = Number(args.timeout || 120) * 1000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
fs.mkdirSync(OUT, { recursive: true });

// ------------------------------------------------------------ reporting

const results = [];
const problems = []; // console errors, page errors, failed requests
let browser = null;
let finished = false;
let fileChoosers = 0;

function report(name, ok, detail = '') {
  results.push({ name, ok });
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}${detail ? ` — ${detail}` : ''}`);
}

function summary() {
  const passed = results.filter((r) => r.ok).length;
  const failed = results.length - passed;
  console.log(`${passed} passed, ${failed} failed`);
  return failed;
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms / 1000} s`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function check(name, fn, timeoutMs = 30_000) {
  try {
    const detail = await withTimeout(Promise.resolve().then(fn), timeoutMs, name);
    report(name, true, typeof detail === 'string' ? detail : '');
    return true;
  } catch (e) {
    report(name, false, String((e && e.message) || e).split('\n')[0]);
    return false;
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

const overall = setTimeout(() => {
  if (finished) return;
  report('overall time limit', false, `the test ran past ${OVERALL_MS / 1000} s`);
  summary();
  // Playwright kills the browser it launched when this process exits.
  process.exit(1);
}, OVERALL_MS);

// --------------------------------------------------------------- helpers

function watch(page, label) {
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const loc = msg.location();
    problems.push(`${label}: console error: ${msg.text()}${loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`);
  });
  page.on('pageerror', (err) => problems.push(`${label}: page error: ${err.message}`));
  page.on('request', (req) => {
    const u = req.url();
    if (u.startsWith('data:') || u.startsWith('blob:')) return;
    if (new URL(u).origin !== ORIGIN) problems.push(`${label}: request to another origin: ${u}`);
  });
  page.on('requestfailed', (req) => {
    const why = (req.failure() && req.failure().errorText) || 'failed';
    // A fetch or image superseded by a newer query may be cancelled.
    if (why.includes('ERR_ABORTED') && ['fetch', 'xhr', 'image'].includes(req.resourceType())) return;
    problems.push(`${label}: request failed: ${req.method()} ${req.url()}: ${why}`);
  });
  page.on('response', (res) => {
    if (res.status() >= 400) problems.push(`${label}: HTTP ${res.status()} for ${res.request().method()} ${res.url()}`);
  });
}

const pathOf = (res) => new URL(res.url()).pathname;
const isSimilar = (res) => pathOf(res) === '/v1/recommend/similar' && res.request().method() === 'POST';
const isForUser = (res) => pathOf(res) === '/v1/recommend/user' && res.request().method() === 'POST';
const isInteraction = (res) => pathOf(res) === '/v1/interactions' && res.request().method() === 'POST';

function jsonBody(req) {
  try { return JSON.parse(req.postData() || ''); } catch { return null; }
}

async function seqOf(page, selector) {
  return page.$eval(selector, (el) => Number(el.dataset.seq || 0));
}

// Waits until `selector` has rendered again after `prev` and is not loading.
async function waitRendered(page, selector, prev, timeout = 20_000) {
  await page.waitForFunction(([sel, p]) => {
    const el = document.querySelector(sel);
    return el && el.dataset.state !== 'loading' && Number(el.dataset.seq || 0) > p;
  }, [selector, prev], { timeout });
  const st = await page.$eval(selector, (el) => el.dataset.state);
  assert(st === 'ready', `${selector} ended in state "${st}"`);
}

async function cardIds(page) {
  return page.$$eval('#results .card', (cs) => cs.map((c) => c.dataset.productId));
}

async function forYouIds(page) {
  return page.$$eval('#for-you .rec', (cs) => cs.map((c) => c.dataset.productId));
}

async function waitThumbs(page, atLeast, timeout = 20_000) {
  await page.waitForFunction((n) => {
    const imgs = [...document.querySelectorAll('#results .card img')];
    return imgs.filter((i) => i.complete && i.naturalWidth > 0).length >= n;
  }, atLeast, { timeout });
}

async function openContext(options) {
  const context = await browser.newContext({ ...options, serviceWorkers: 'block' });
  if (TOKEN) {
    await context.addInitScript((t) => {
      try { window.localStorage.setItem('lookbook.token', t); } catch { /* no storage */ }
    }, TOKEN);
  }
  context.setDefaultTimeout(15_000);
  return context;
}

async function loadPage(page) {
  const res = await page.goto(BASE.href, { waitUntil: 'load' });
  assert(res && res.ok(), `GET ${BASE.href} answered ${res ? res.status() : 'nothing'}`);
  await page.waitForFunction(() => {
    const r = document.querySelector('#results');
    return r && r.dataset.state === 'ready';
  }, null, { timeout: 20_000 });
}

// ----------------------------------------------------------------- test

async function main() {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
  const context = await openContext({ viewport: { width: 1280, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  watch(page, 'desktop');
  // Keeps file choosers intercepted for the whole test (a listener added
  // right after a navigation can miss the first one).
  page.on('filechooser', () => { fileChoosers += 1; });

  const loaded = await check('page loads: header stats and a browse grid', async () => {
    await loadPage(page);
    await page.waitForFunction(() => document.querySelector('#stats')?.dataset.catalogSize, null, { timeout: 15_000 });
    const stats = (await page.textContent('#stats')).trim();
    const size = Number(await page.$eval('#stats', (e) => e.dataset.catalogSize));
    assert(size > 0, `catalogue size shown is ${size}`);
    const n = (await cardIds(page)).length;
    assert(n > 0, 'the browse grid is empty');
    const title = await page.title();
    assert(title, 'the page has no title');
    return `"${stats}", ${n} products in the browse grid`;
  });
  if (!loaded) return;

  await check('photo upload: >= 10 similar products with loaded thumbnails', async () => {
    const prev = await seqOf(page, '#results');
    const resP = page.waitForResponse(isSimilar);
    await page.setInputFiles('#photo', PHOTO);
    const res = await resP;
    assert(res.ok(), `POST /v1/recommend/similar answered ${res.status()}`);
    const ctype = res.request().headers()['content-type'] || '';
    assert(ctype.startsWith('multipart/form-data'), `the photo was sent as ${ctype}, not multipart/form-data`);
    await waitRendered(page, '#results', prev);
    const n = (await cardIds(page)).length;
    assert(n >= 10, `only ${n} result cards`);
    await waitThumbs(page, 10);
    const loadedThumbs = await page.$$eval('#results .card img', (is) => is.filter((i) => i.complete && i.naturalWidth > 0).length);
    const heading = (await page.textContent('#results-heading')).trim();
    return `${n} cards, ${loadedThumbs} thumbnails loaded, heading "${heading}"`;
  });

  await check('articleType filter: every result shows the chosen type', async () => {
    const select = 'select[data-key="articleType"]';
    const options = await page.$$eval(`${select} option`, (os) => os
      .map((o) => ({ value: o.value, count: Number(o.dataset.count || 0) }))
      .filter((o) => o.value));
    assert(options.length > 0, 'the articleType filter offers no values');
    const choice = options.reduce((best, o) => (o.count > best.count ? o : best), options[0]);
    assert(choice.count >= 3 || options.every((o) => !o.count), `the most common articleType matches only ${choice.count} products`);
    const prev = await seqOf(page, '#results');
    const resP = page.waitForResponse(isSimilar);
    await page.selectOption(select, choice.value);
    const res = await resP;
    assert(res.ok(), `the filtered query answered ${res.status()}`);
    // Chromium does not report multipart bodies holding a file (a photo
    // query); a JSON body (a product query) is checked for the filter.
    const raw = res.request().postDataBuffer();
    if (raw) {
      const body = raw.toString('latin1');
      assert(body.includes('"articleType"') && body.includes(JSON.stringify(choice.value)),
        'the request carries no articleType filter');
    }
    await waitRendered(page, '#results', prev);
    const cards = await page.$$eval('#results .card', (cs) => cs.map((c) => {
      const t = c.querySelector('.type');
      const r = t ? t.getBoundingClientRect() : null;
      return {
        id: c.dataset.productId,
        type: c.dataset.articleType,
        text: t ? t.innerText.trim() : '',
        visible: Boolean(r && r.width > 0 && r.height > 0),
      };
    }));
    assert(cards.length >= Math.min(2, choice.count || 2), `only ${cards.length} cards for "${choice.value}"`);
    const wrong = cards.filter((c) => c.type !== choice.value || c.text !== choice.value || !c.visible);
    assert(!wrong.length, `${wrong.length} of ${cards.length} cards do not show "${choice.value}", e.g. ${JSON.stringify(wrong[0])}`);
    // Back to no filter for the next checks.
    const prev2 = await seqOf(page, '#results');
    const resP2 = page.waitForResponse(isSimilar);
    await page.selectOption(select, '');
    assert((await resP2).ok(), 'clearing the filter failed');
    await waitRendered(page, '#results', prev2);
    return `"${choice.value}" (${choice.count} in catalogue): ${cards.length} cards, all "${choice.value}"`;
  });

  await check('click a result card: its neighbours are shown', async () => {
    const cards = page.locator('#results .card');
    const count = await cards.count();
    assert(count >= 3, `only ${count} cards to click`);
    const target = cards.nth(2);
    const id = await target.getAttribute('data-product-id');
    const name = (await target.locator('.name').innerText()).trim();
    const prev = await seqOf(page, '#results');
    const resP = page.waitForResponse((r) => isSimilar(r) && (jsonBody(r.request()) || {}).productId === id);
    await target.locator('.card-open').click();
    const res = await resP;
    assert(res.ok(), `the neighbours query answered ${res.status()}`);
    await waitRendered(page, '#results', prev);
    const heading = (await page.textContent('#results-heading')).trim();
    assert(heading.includes(name) || heading.includes(id), `heading "${heading}" does not name "${name}"`);
    const ids = await cardIds(page);
    assert(ids.length > 0, 'no neighbours shown');
    assert(!ids.includes(id), `product ${id} is among its own neighbours`);
    return `${ids.length} neighbours of ${id} "${name}"`;
  });

  await check('keyboard: Tab to a result card and Enter shows its neighbours', async () => {
    await page.focus('#results-heading');
    let focused = null;
    for (let i = 0; i < 12 && !focused; i++) {
      await page.keyboard.press('Tab');
      focused = await page.evaluate(() => {
        const el = document.activeElement;
        const card = el && el.matches('#results .card-open') ? el.closest('.card') : null;
        return card ? { id: card.dataset.productId, name: card.querySelector('.name').innerText.trim() } : null;
      });
    }
    assert(focused, 'no result card got the focus within 12 Tab presses from the results heading');
    const ring = await page.evaluate(() => {
      const s = getComputedStyle(document.activeElement);
      return s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0;
    });
    assert(ring, 'the focused card shows no focus outline');
    const prev = await seqOf(page, '#results');
    const resP = page.waitForResponse((r) => isSimilar(r) && (jsonBody(r.request()) || {}).productId === focused.id);
    await page.keyboard.press('Enter');
    assert((await resP).ok(), 'the neighbours query failed');
    await waitRendered(page, '#results', prev);
    const heading = (await page.textContent('#results-heading')).trim();
    assert(heading.includes(focused.name) || heading.includes(focused.id), `heading "${heading}" does not name "${focused.name}"`);
    const ids = await cardIds(page);
    assert(ids.length > 0 && !ids.includes(focused.id), 'the focused product\'s neighbours are not shown');
    return `Enter on ${focused.id} showed ${ids.length} neighbours`;
  });

  let shopper = '';
  await check('shopper: actions change "Recommended for you", each with a reason', async () => {
    const prevList = await seqOf(page, '#for-you');
    const firstP = page.waitForResponse(isForUser);
    await page.click('#new-shopper');
    assert((await firstP).ok(), 'the first recommendations request failed');
    await waitRendered(page, '#for-you', prevList);
    shopper = (await page.inputValue('#shopper-id')).trim();
    assert(/^shopper-[a-z0-9]+$/.test(shopper), `unexpected new shopper id "${shopper}"`);
    const stored = await page.evaluate(() => window.localStorage.getItem('lookbook.shopper'));
    assert(stored === shopper, 'the shopper id is not kept in localStorage');
    const before = await forYouIds(page);

    const cards = page.locator('#results .card');
    assert((await cards.count()) >= 4, 'fewer than 4 cards to act on');
    const steps = [
      [0, 'ACTION_VIEW', 'keyboard'],
      [1, 'ACTION_ADD_TO_CART', 'click'],
      [2, 'ACTION_PURCHASE', 'click'],
      [3, 'ACTION_DISLIKE', 'click'],
    ];
    for (const [i, action, how] of steps) {
      const card = cards.nth(i);
      const pid = await card.getAttribute('data-product-id');
      const button = card.locator(`.action[data-action="${action}"]`);
      const prev = await seqOf(page, '#for-you');
      const recP = page.waitForResponse((r) => isInteraction(r) && (jsonBody(r.request()) || {}).interaction?.productId === pid);
      const listP = page.waitForResponse(isForUser);
      if (how === 'keyboard') {
        await button.focus();
        await page.keyboard.press('Enter');
      } else {
        await button.click();
      }
      const rec = await recP;
      assert(rec.ok(), `${action} on ${pid} answered ${rec.status()}`);
      const sent = jsonBody(rec.request()).interaction;
      assert(sent.userId === shopper && sent.action === action, `sent ${JSON.stringify(sent)}`);
      assert((await listP).ok(), 'refreshing the recommendations failed');
      await waitRendered(page, '#for-you', prev);
    }
    const after = await forYouIds(page);
    assert(after.length > 0, '"Recommended for you" is empty after the actions');
    assert(JSON.stringify(after) !== JSON.stringify(before), 'the list did not change');
    const reasons = await page.$$eval('#for-you .rec', (rs) => rs.map((r) => (r.querySelector('.reason')?.innerText || '').trim()));
    const empty = reasons.filter((r) => !r).length;
    assert(!empty, `${empty} of ${reasons.length} recommendations show no reason`);
    return `${shopper}: ${before.length} items before, ${after.length} after; reasons e.g. "${reasons[0]}"`;
  }, 45_000);

  await check('diversity switch re-runs the query and the shopper list', async () => {
    const before = await cardIds(page);
    const prev = await seqOf(page, '#results');
    const simP = page.waitForResponse(isSimilar);
    const userP = shopper ? page.waitForResponse(isForUser) : null;
    await page.focus('#diversity');
    await page.keyboard.press('Space');
    assert(await page.isChecked('#diversity'), 'Space did not turn the switch on');
    const sim = await simP;
    assert(sim.ok(), `the diversified query answered ${sim.status()}`);
    const d = (jsonBody(sim.request()) || {}).diversity || {};
    assert(d.mmrLambda === 0.5 && d.maxPerKey === 'articleType' && Number(d.maxPerValue) === 3,
      `the request's diversity is ${JSON.stringify(d)}`);
    if (userP) {
      const user = await userP;
      assert(user.ok(), 'the diversified shopper list failed');
      assert((jsonBody(user.request()) || {}).diversity, 'the shopper list was asked without diversity');
    }
    await waitRendered(page, '#results', prev);
    const after = await cardIds(page);
    const changed = JSON.stringify(after) !== JSON.stringify(before);
    await page.screenshot({ path: path.join(OUT, 'desktop.png'), fullPage: true });
    // And off again.
    const prev2 = await seqOf(page, '#results');
    const offP = page.waitForResponse(isSimilar);
    await page.click('#diversity');
    const off = await offP;
    assert(off.ok() && !(jsonBody(off.request()) || {}).diversity, 'turning diversity off still sends diversity');
    await waitRendered(page, '#results', prev2);
    return `re-requested; list ${changed ? 'changed' : 'unchanged'} (${after.length} items)`;
  });

  await check('desktop screenshot, no horizontal overflow at 1280 px', async () => {
    const file = path.join(OUT, 'desktop.png');
    if (!fs.existsSync(file)) await page.screenshot({ path: file, fullPage: true });
    const { sw, vw } = await page.evaluate(() => ({ sw: document.scrollingElement.scrollWidth, vw: window.innerWidth }));
    assert(sw <= vw, `the page is ${sw} px wide in a ${vw} px viewport`);
    return `${file} (${fs.statSync(file).size} bytes)`;
  });

  await check('keyboard: photo picker, filters, switch, cards and shopper buttons are Tab-reachable and operable', async () => {
    // Start from the top of a fresh load (the shopper stays in localStorage).
    await loadPage(page);
    if (shopper) {
      await page.waitForFunction(() => document.querySelector('#for-you')?.dataset.state === 'ready', null, { timeout: 15_000 });
    }
    const targets = {
      photo: '#photo',
      filter: 'select[data-key="articleType"]',
      diversity: '#diversity',
      card: '#results .card-open',
      shopperId: '#shopper-id',
      newShopper: '#new-shopper',
    };
    if (shopper) {
      targets.action = '#results .card .action';
      targets.forYou = '#for-you .rec-open';
      targets.forget = '#forget';
    }
    const seen = new Set();
    const unseen = () => Object.keys(targets).filter((k) => !seen.has(k));
    let presses = 0;
    while (unseen().length && presses < 400) {
      await page.keyboard.press('Tab');
      presses += 1;
      const hit = await page.evaluate((t) => {
        const el = document.activeElement;
        if (!el || el === document.body) return [];
        return Object.entries(t).filter(([, sel]) => el.matches(sel)).map(([k]) => k);
      }, targets);
      hit.forEach((k) => seen.add(k));
    }
    assert(!unseen().length, `not reached with Tab after ${presses} presses: ${unseen().join(', ')}`);

    // Space on the photo input opens the file chooser (counted by the
    // listener set up in main(), which keeps Chromium's dialog intercepted).
    await page.focus('#photo');
    const choosersBefore = fileChoosers;
    await page.keyboard.press('Space');
    for (let i = 0; i < 100 && fileChoosers === choosersBefore; i++) await page.waitForTimeout(50);
    assert(fileChoosers > choosersBefore, 'Space on the focused photo input did not open the file chooser');

    // Arrow keys on a focused filter change it and re-run the query.
    const prev = await seqOf(page, '#results');
    await page.focus(targets.filter);
    await page.keyboard.press('ArrowDown');
    const value = await page.inputValue(targets.filter);
    assert(value !== '', 'ArrowDown on the focused filter did not choose a value');
    await waitRendered(page, '#results', prev);
    const types = await page.$$eval('#results .card', (cs) => cs.map((c) => c.dataset.articleType));
    assert(types.every((t) => t === value), `browsing with articleType "${value}" shows other types too`);
    const prev2 = await seqOf(page, '#results');
    await page.selectOption(targets.filter, '');
    await waitRendered(page, '#results', prev2);

    // Enter on "New shopper" makes a new shopper (when there is one already).
    let detail = `${presses} Tab presses reached ${Object.keys(targets).join(', ')}`;
    if (shopper) {
      await page.focus('#new-shopper');
      await page.keyboard.press('Enter');
      const id = (await page.inputValue('#shopper-id')).trim();
      assert(id && id !== shopper, 'Enter on "New shopper" did not make a new shopper');
      detail += '; Space/Enter/arrows operate picker, filter, shopper button';
    }
    return detail;
  }, 40_000);

  if (shopper) {
    await check('forget me erases the shopper', async () => {
      // The current shopper was created by Enter above: act once, then forget.
      const card = page.locator('#results .card').first();
      const recP = page.waitForResponse(isInteraction);
      await card.locator('.action[data-action="ACTION_VIEW"]').click();
      assert((await recP).ok(), 'recording a view failed');
      const id = (await page.inputValue('#shopper-id')).trim();
      const delP = page.waitForResponse((r) => r.request().method() === 'DELETE' && pathOf(r) === `/v1/users/${encodeURIComponent(id)}`);
      await page.click('#forget');
      const del = await delP;
      assert(del.ok(), `DELETE /v1/users/${id} answered ${del.status()}`);
      await page.waitForFunction(() => !window.localStorage.getItem('lookbook.shopper'), null, { timeout: 5_000 });
      const status = (await page.textContent('#shopper-status')).trim();
      return `${id}: "${status}"`;
    });
  }

  await check('phone (390 px): no horizontal overflow, screenshot', async () => {
    const phone = await openContext({
      viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 1,
    });
    const p = await phone.newPage();
    watch(p, 'phone');
    await loadPage(p);
    const prev = await seqOf(p, '#results');
    const resP = p.waitForResponse(isSimilar);
    await p.setInputFiles('#photo', PHOTO);
    assert((await resP).ok(), 'the photo query failed on the phone');
    await waitRendered(p, '#results', prev);
    await waitThumbs(p, 4);
    await p.click('#new-shopper');
    await p.waitForFunction(() => document.querySelector('#for-you')?.dataset.state === 'ready', null, { timeout: 15_000 });
    const { sw, vw } = await p.evaluate(() => ({ sw: document.scrollingElement.scrollWidth, vw: window.innerWidth }));
    const file = path.join(OUT, 'phone.png');
    await p.screenshot({ path: file, fullPage: true });
    // Leave no shopper behind on the server.
    const id = (await p.inputValue('#shopper-id')).trim();
    if (id) {
      const delP = p.waitForResponse((r) => r.request().method() === 'DELETE');
      await p.click('#forget');
      await delP;
    }
    await phone.close();
    assert(vw === 390, `the viewport is ${vw} px wide, not 390`);
    assert(sw <= vw, `the page is ${sw} px wide in a ${vw} px viewport`);
    return `${file} (${fs.statSync(file).size} bytes), scrollWidth ${sw}`;
  });

  await context.close();
}

let crashed = null;
try {
  await main();
} catch (e) {
  crashed = e;
}
if (crashed) report('test harness', false, String(crashed.message || crashed).split('\n')[0]);
report('no console errors, page errors or failed requests', problems.length === 0,
  problems.length ? `${problems.length}: ${problems.slice(0, 5).join(' | ')}` : '');
for (const p of problems.slice(5, 30)) console.log(`     ${p}`);
finished = true;
clearTimeout(overall);
try {
  if (browser) await withTimeout(browser.close(), 10_000, 'closing the browser');
} catch { /* the process exit kills it */ }
const failed = summary();
process.exit(failed ? 1 : 0);
