// Lookbook web page: find products by photo, browse neighbours, filter,
// and try the shopper recommendations. Talks to the HTTP/JSON API of the
// same origin (proto3 JSON mapping of lookbook.v1). No framework, no build.
'use strict';

(() => {
  const K_SIMILAR = 24;
  const K_USER = 12;
  const BROWSE_PAGE = 24;
  const MAX_FILTER_VALUES = 50;
  // Keys with more distinct values than this make useless selects (names, years).
  const MAX_DISTINCT_FOR_FILTER = 60;
  const DIVERSITY = { mmrLambda: 0.5, maxPerKey: 'articleType', maxPerValue: 3 };
  const FILTER_KEY_ORDER = ['gender', 'masterCategory', 'subCategory', 'articleType', 'baseColour', 'season', 'usage'];
  const ACTIONS = [
    { action: 'ACTION_VIEW', label: 'View', verb: 'Viewed' },
    { action: 'ACTION_ADD_TO_CART', label: 'Cart', verb: 'Added to cart:' },
    { action: 'ACTION_PURCHASE', label: 'Buy', verb: 'Bought' },
    { action: 'ACTION_DISLIKE', label: 'Dislike', verb: 'Disliked' },
  ];
  const STORE = { token: 'lookbook.token', shopper: 'lookbook.shopper', diversity: 'lookbook.diversity' };
  const THUMB_CACHE_MAX = 400;

  const $ = (id) => document.getElementById(id);

  function storageGet(key) {
    try { return window.localStorage.getItem(key) || ''; } catch { return ''; }
  }
  function storageSet(key, value) {
    try {
      if (value) window.localStorage.setItem(key, value);
      else window.localStorage.removeItem(key);
    } catch { /* storage disabled: keep the value for this page only */ }
  }

  const state = {
    token: storageGet(STORE.token),
    shopper: storageGet(STORE.shopper),
    diversity: storageGet(STORE.diversity) === '1',
    filters: new Map(), // attribute key -> chosen value
    // { kind: 'browse' } | { kind: 'product', id, name, item } | { kind: 'photo', file }
    query: { kind: 'browse' },
    browsePageToken: '',
    resultsSeq: 0,
    forYouSeq: 0,
    marks: new Map(), // product id -> Set of actions done by the current shopper
    photoUrl: '',
  };

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function authHeaders() {
    return state.token ? { Authorization: `Bearer ${state.token}` } : {};
  }

  async function api(path, { method = 'GET', json, form } = {}) {
    const headers = { Accept: 'application/json', ...authHeaders() };
    let body;
    if (json !== undefined) {
      headers['Content-Type'] = 'application/json';
      body = JSON.stringify(json);
    } else if (form !== undefined) {
      body = form; // the browser sets the multipart boundary
    }
    let res;
    try {
      res = await fetch(path, { method, headers, body, cache: 'no-store' });
    } catch {
      throw new ApiError(0, 'The server cannot be reached. Is it running?');
    }
    const text = await res.text();
    let data = {};
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        if (res.ok) throw new ApiError(res.status, 'The server sent an answer this page cannot read.');
      }
    }
    if (!res.ok) {
      const message = (data && data.error && data.error.message) || `${res.status} ${res.statusText}`.trim();
      if (res.status === 401) askForToken();
      throw new ApiError(res.status, message);
    }
    return data || {};
  }

  const productPath = (id) => `/v1/products/${encodeURIComponent(id)}`;

  // ----------------------------------------------------------- messages

  function showError(err, context) {
    if (err && err.status === 401 && !state.token) {
      return; // askForToken already says what to do
    }
    const message = (err && err.message) || String(err);
    const text = context ? `${context}: ${message}` : message;
    $('error-text').textContent = text;
    $('error').hidden = false;
    console.warn('lookbook:', text);
  }
  function hideError() {
    $('error').hidden = true;
  }

  function askForToken() {
    const settings = $('settings');
    settings.open = true;
    $('error-text').textContent = state.token
      ? 'The server refused the access token: check it under “Access token”.'
      : 'This server needs an access token: enter it under “Access token”.';
    $('error').hidden = false;
  }

  // ---------------------------------------------------------- products

  function normalize(raw) {
    const attributes = (raw && raw.attributes) || {};
    return {
      id: String(raw.productId || ''),
      attributes,
      hasThumbnail: Boolean(raw.hasThumbnail),
      score: typeof raw.score === 'number' ? raw.score : (raw.score ? Number(raw.score) : 0),
      reason: raw.reason || '',
    };
  }

  function displayName(item) {
    const a = item.attributes || {};
    return a.productDisplayName || a.name || item.id;
  }

  function metricName(metric) {
    return String(metric || '').replace(/^METRIC_/, '').toLowerCase();
  }

  // Thumbnails: a plain <img src> when no token is needed; with a token the
  // image is fetched with the header and shown through a blob: URL.
  const thumbCache = new Map(); // id -> Promise<string>

  function thumbUrl(id) {
    return `${productPath(id)}/thumbnail`;
  }

  function tokenThumb(id) {
    let p = thumbCache.get(id);
    if (p) {
      thumbCache.delete(id);
      thumbCache.set(id, p); // most recently used last
      return p;
    }
    p = fetch(thumbUrl(id), { headers: authHeaders() }).then(async (res) => {
      if (!res.ok) throw new ApiError(res.status, `thumbnail ${res.status}`);
      return URL.createObjectURL(await res.blob());
    });
    p.catch(() => thumbCache.delete(id));
    thumbCache.set(id, p);
    while (thumbCache.size > THUMB_CACHE_MAX) {
      const [oldId, oldP] = thumbCache.entries().next().value;
      thumbCache.delete(oldId);
      oldP.then((url) => URL.revokeObjectURL(url), () => {});
    }
    return p;
  }

  function clearThumbCache() {
    for (const p of thumbCache.values()) p.then((url) => URL.revokeObjectURL(url), () => {});
    thumbCache.clear();
  }

  function thumbnail(item, className) {
    const box = document.createElement('span');
    box.className = className;
    if (!item.hasThumbnail) {
      box.classList.add('no-thumb');
      box.textContent = (item.attributes.articleType || displayName(item)).slice(0, 2);
      box.setAttribute('aria-hidden', 'true');
      return box;
    }
    const img = document.createElement('img');
    img.alt = '';
    img.decoding = 'async';
    img.width = 60;
    img.height = 80;
    img.addEventListener('error', () => {
      box.classList.add('no-thumb');
      img.remove();
    }, { once: true });
    if (state.token) {
      tokenThumb(item.id).then((url) => { img.src = url; }, () => {
        box.classList.add('no-thumb');
        img.remove();
      });
    } else {
      img.src = thumbUrl(item.id);
    }
    box.append(img);
    return box;
  }

  // ------------------------------------------------------------ filters

  function humanize(key) {
    const words = key.replace(/([a-z0-9])([A-Z])/g, '$1 $2').replace(/[_-]+/g, ' ').trim();
    return words.charAt(0).toUpperCase() + words.slice(1).toLowerCase();
  }

  function currentFilter() {
    const must = [];
    for (const [key, value] of state.filters) {
      if (value) must.push({ key, values: [value] });
    }
    return must.length ? { must } : undefined;
  }

  function withOptions(request) {
    const filter = currentFilter();
    if (filter) request.filter = filter;
    if (state.diversity) request.diversity = { ...DIVERSITY };
    return request;
  }

  async function loadFilters() {
    const box = $('filter-fields');
    let data;
    try {
      data = await api(`/v1/attributes?maxValues=${MAX_FILTER_VALUES}`);
    } catch (err) {
      box.replaceChildren(hint('Filters are unavailable.'));
      showError(err, 'Loading filters');
      return;
    }
    const keys = (data.attributes || [])
      .map((a) => ({
        key: a.key || '',
        values: (a.values || []).filter((v) => v.value),
        distinct: Number(a.distinctValues || 0),
      }))
      .filter((a) => a.key && a.values.length > 1 && (a.distinct || a.values.length) <= MAX_DISTINCT_FOR_FILTER);
    const rank = (k) => {
      const i = FILTER_KEY_ORDER.indexOf(k);
      return i < 0 ? FILTER_KEY_ORDER.length : i;
    };
    keys.sort((a, b) => rank(a.key) - rank(b.key) || a.key.localeCompare(b.key));
    if (!keys.length) {
      box.replaceChildren(hint('This catalogue has no attributes to filter on.'));
      return;
    }
    const fields = keys.map(({ key, values }) => {
      const wrap = document.createElement('div');
      wrap.className = 'field';
      const id = `filter-${key.replace(/[^A-Za-z0-9_-]/g, '_')}`;
      const label = document.createElement('label');
      label.htmlFor = id;
      label.textContent = humanize(key);
      const select = document.createElement('select');
      select.id = id;
      select.dataset.key = key;
      const any = new Option('Any', '');
      select.append(any);
      for (const v of values) {
        const opt = new Option(`${v.value} (${Number(v.count || 0).toLocaleString()})`, v.value);
        opt.dataset.count = String(Number(v.count || 0));
        select.append(opt);
      }
      select.value = state.filters.get(key) || '';
      select.addEventListener('change', () => {
        if (select.value) state.filters.set(key, select.value);
        else state.filters.delete(key);
        filtersChanged();
      });
      wrap.append(label, select);
      return wrap;
    });
    box.replaceChildren(...fields);
  }

  function filtersChanged() {
    $('clear-filters').hidden = state.filters.size === 0;
    if (state.query.kind === 'browse') state.browsePageToken = '';
    runQuery();
    refreshForYou();
  }

  function hint(text) {
    const p = document.createElement('p');
    p.className = 'hint';
    p.textContent = text;
    return p;
  }

  // ------------------------------------------------------------ results

  function setHeading() {
    const q = state.query;
    const heading = $('results-heading');
    const thumb = $('query-thumb');
    $('back-to-browse').hidden = q.kind === 'browse';
    $('results').dataset.queryKind = q.kind;
    $('results').dataset.queryId = q.kind === 'product' ? q.id : '';
    if (q.kind === 'product') {
      heading.textContent = `Similar to “${q.name}”`;
      const t = thumbnail(q.item, 'query-thumb-box');
      t.id = 'query-thumb-box';
      const old = $('query-thumb-box');
      if (old) old.replaceWith(t);
      else thumb.after(t);
      thumb.hidden = true;
      return;
    }
    const old = $('query-thumb-box');
    if (old) old.remove();
    if (q.kind === 'photo') {
      heading.textContent = 'Similar to your photo';
      thumb.src = state.photoUrl;
      thumb.alt = 'Your photo';
      thumb.hidden = false;
    } else {
      heading.textContent = state.filters.size ? 'Browse: filtered catalogue' : 'Browse the catalogue';
      thumb.hidden = true;
      thumb.removeAttribute('src');
    }
  }

  function startLoading(el) {
    el.dataset.state = 'loading';
    el.setAttribute('aria-busy', 'true');
  }
  function finishLoading(el, ok) {
    el.dataset.state = ok ? 'ready' : 'error';
    el.dataset.seq = String(Number(el.dataset.seq || 0) + 1);
    el.removeAttribute('aria-busy');
  }

  async function runQuery({ append = false } = {}) {
    const seq = ++state.resultsSeq;
    const results = $('results');
    const q = state.query;
    setHeading();
    startLoading(results);
    let items;
    let nextToken = '';
    let scored = true;
    try {
      if (q.kind === 'product') {
        const data = await api('/v1/recommend/similar', {
          method: 'POST',
          json: withOptions({ productId: q.id, k: K_SIMILAR }),
        });
        items = data.items || [];
      } else if (q.kind === 'photo') {
        const form = new FormData();
        form.append('image', q.file, q.file.name || 'photo');
        form.append('request', JSON.stringify(withOptions({ k: K_SIMILAR })));
        const data = await api('/v1/recommend/similar', { method: 'POST', form });
        items = data.items || [];
      } else if (state.filters.size) {
        // Filtered browsing: the anonymous shopper's list (trending, then
        // the catalogue's typical looks) honours filters.
        const data = await api('/v1/recommend/user', {
          method: 'POST',
          json: withOptions({ userId: '', k: K_SIMILAR }),
        });
        items = data.items || [];
      } else {
        const params = new URLSearchParams({ pageSize: String(BROWSE_PAGE) });
        if (append && state.browsePageToken) params.set('pageToken', state.browsePageToken);
        const data = await api(`/v1/products?${params}`);
        items = data.products || [];
        nextToken = data.nextPageToken || '';
        scored = false;
      }
    } catch (err) {
      if (seq !== state.resultsSeq) return;
      finishLoading(results, false);
      $('result-count').textContent = 'Could not load results.';
      showError(err, 'Loading results');
      return;
    }
    if (seq !== state.resultsSeq) return; // a newer query is under way
    const normalized = items.map(normalize).filter((it) => it.id);
    renderResults(normalized, { append, scored });
    if (q.kind === 'browse' && !state.filters.size) {
      state.browsePageToken = nextToken;
      $('more').hidden = !nextToken;
    } else {
      $('more').hidden = true;
    }
    finishLoading(results, true);
  }

  function renderResults(items, { append, scored }) {
    const grid = $('results');
    const cards = items.map((item) => card(item, scored));
    if (append) grid.append(...cards);
    else grid.replaceChildren(...cards);
    const total = grid.querySelectorAll('.card').length;
    const q = state.query;
    let text;
    if (!total) {
      text = state.filters.size ? 'Nothing matches these filters.' : 'Nothing to show yet.';
      grid.append(hint(state.filters.size ? 'Try fewer filters.' : 'The catalogue is empty.'));
    } else if (q.kind === 'browse') {
      text = `Showing ${total} product${total === 1 ? '' : 's'}.`;
    } else {
      text = `${total} similar product${total === 1 ? '' : 's'}.`;
    }
    $('result-count').textContent = text;
  }

  function card(item, scored) {
    const el = document.createElement('article');
    el.className = 'card';
    el.dataset.productId = item.id;
    const type = item.attributes.articleType || '';
    el.dataset.articleType = type;
    const name = displayName(item);

    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'card-open';
    open.title = `Show products similar to ${name}`;
    open.append(thumbnail(item, 'thumb'));
    const nameEl = document.createElement('span');
    nameEl.className = 'name';
    nameEl.textContent = name;
    const meta = document.createElement('span');
    meta.className = 'meta';
    const typeEl = document.createElement('span');
    typeEl.className = 'type';
    typeEl.textContent = type;
    meta.append(typeEl);
    if (scored) {
      const score = document.createElement('span');
      score.className = 'score';
      score.title = 'Similarity score';
      score.textContent = item.score.toFixed(3);
      meta.append(score);
    }
    open.append(nameEl, meta);
    if (item.reason && (state.query.kind === 'browse')) {
      const reason = document.createElement('span');
      reason.className = 'card-reason';
      reason.textContent = item.reason;
      open.append(reason);
    }
    open.addEventListener('click', () => showProduct(item));

    const actions = document.createElement('div');
    actions.className = 'actions';
    actions.setAttribute('role', 'group');
    actions.setAttribute('aria-label', `Shopper actions for ${name}`);
    const done = state.marks.get(item.id);
    for (const a of ACTIONS) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'action';
      b.dataset.action = a.action;
      b.setAttribute('aria-label', `${a.label}: ${name}`);
      b.setAttribute('aria-pressed', done && done.has(a.action) ? 'true' : 'false');
      b.textContent = a.label;
      b.addEventListener('click', () => interact(item, a, b));
      actions.append(b);
    }
    el.append(open, actions);
    if (done && done.has('ACTION_DISLIKE')) el.classList.add('disliked');
    return el;
  }

  function showProduct(item) {
    state.query = { kind: 'product', id: item.id, name: displayName(item), item };
    runQuery().then(() => {
      const heading = $('results-heading');
      heading.focus({ preventScroll: true });
      heading.scrollIntoView({ block: 'nearest' });
    });
    if (state.shopper) record(item, 'ACTION_VIEW').then(refreshForYou, (err) => showError(err, 'Recording the view'));
  }

  function showBrowse() {
    state.query = { kind: 'browse' };
    state.browsePageToken = '';
    runQuery().then(() => $('results-heading').focus({ preventScroll: true }));
  }

  function usePhoto(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith('image/')) {
      showError(new Error(`“${file.name}” is not an image.`));
      return;
    }
    if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
    state.photoUrl = URL.createObjectURL(file);
    state.query = { kind: 'photo', file };
    hideError();
    runQuery();
  }

  // ------------------------------------------------------------ shopper

  function setShopper(id) {
    id = (id || '').trim();
    if (id !== state.shopper) state.marks.clear();
    state.shopper = id;
    storageSet(STORE.shopper, id);
    $('shopper-id').value = id;
    document.body.classList.toggle('has-shopper', Boolean(id));
    $('forget').disabled = !id;
    $('shopper-status').textContent = id
      ? `Shopping as ${id}. Use View, Cart, Buy and Dislike on any product.`
      : 'No shopper chosen: create one to record views, carts and purchases.';
    for (const b of document.querySelectorAll('.card .action')) b.setAttribute('aria-pressed', 'false');
    for (const c of document.querySelectorAll('.card.disliked')) c.classList.remove('disliked');
    refreshForYou();
  }

  function newShopperId() {
    const bytes = new Uint8Array(4);
    crypto.getRandomValues(bytes);
    const n = bytes.reduce((acc, b) => acc * 256 + b, 0);
    return `shopper-${n.toString(36).padStart(6, '0').slice(-6)}`;
  }

  function record(item, action) {
    return api('/v1/interactions', {
      method: 'POST',
      json: { interaction: { userId: state.shopper, productId: item.id, action } },
    }).then(() => {
      let set = state.marks.get(item.id);
      if (!set) state.marks.set(item.id, (set = new Set()));
      set.add(action);
    });
  }

  async function interact(item, a, button) {
    if (!state.shopper) {
      $('shopper-status').textContent = 'Create or choose a shopper first.';
      return;
    }
    button.disabled = true;
    try {
      await record(item, a.action);
      button.setAttribute('aria-pressed', 'true');
      if (a.action === 'ACTION_DISLIKE') button.closest('.card').classList.add('disliked');
      $('shopper-status').textContent = `${a.verb} “${displayName(item)}”.`;
    } catch (err) {
      showError(err, 'Recording the action');
      return;
    } finally {
      button.disabled = false;
    }
    refreshForYou();
  }

  async function refreshForYou() {
    const list = $('for-you');
    const empty = $('for-you-empty');
    const seq = ++state.forYouSeq;
    if (!state.shopper) {
      list.replaceChildren();
      empty.hidden = false;
      empty.textContent = 'Choose or create a shopper to see recommendations.';
      list.dataset.state = 'idle';
      list.removeAttribute('aria-busy');
      return;
    }
    startLoading(list);
    let data;
    try {
      data = await api('/v1/recommend/user', {
        method: 'POST',
        json: withOptions({ userId: state.shopper, k: K_USER }),
      });
    } catch (err) {
      if (seq !== state.forYouSeq) return;
      finishLoading(list, false);
      showError(err, 'Loading recommendations');
      return;
    }
    if (seq !== state.forYouSeq) return;
    const items = (data.items || []).map(normalize).filter((it) => it.id);
    list.replaceChildren(...items.map(recItem));
    empty.hidden = items.length > 0;
    empty.textContent = 'Nothing to recommend yet.';
    finishLoading(list, true);
  }

  function recItem(item) {
    const li = document.createElement('li');
    li.className = 'rec';
    li.dataset.productId = item.id;
    li.dataset.articleType = item.attributes.articleType || '';
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'rec-open';
    b.title = 'Show similar products';
    b.append(thumbnail(item, 'rec-thumb'));
    const text = document.createElement('span');
    text.className = 'rec-text';
    const name = document.createElement('span');
    name.className = 'name';
    name.textContent = displayName(item);
    const reason = document.createElement('span');
    reason.className = 'reason';
    reason.textContent = item.reason;
    text.append(name, reason);
    b.append(text);
    b.addEventListener('click', () => showProduct(item));
    li.append(b);
    return li;
  }

  async function forgetShopper() {
    const id = state.shopper;
    if (!id) return;
    const button = $('forget');
    button.disabled = true;
    try {
      const data = await api(`/v1/users/${encodeURIComponent(id)}`, { method: 'DELETE' });
      const n = Number(data.interactionsErased || 0);
      setShopper('');
      $('shopper-status').textContent = data.forgotten
        ? `Forgot ${id}: ${n} interaction${n === 1 ? '' : 's'} erased.`
        : `Nothing was known about ${id}.`;
    } catch (err) {
      button.disabled = false;
      showError(err, 'Forgetting the shopper');
    }
  }

  // -------------------------------------------------------------- stats

  async function loadStats() {
    const el = $('stats');
    try {
      const s = await api('/v1/stats');
      const size = Number(s.catalogSize || 0);
      const parts = [`${size.toLocaleString()} product${size === 1 ? '' : 's'}`];
      if (s.model) {
        const detail = [s.dim ? `${s.dim}-d` : '', metricName(s.metric)].filter(Boolean).join(', ');
        parts.push(detail ? `${s.model} (${detail})` : s.model);
      }
      el.textContent = parts.join(' · ');
      el.dataset.catalogSize = String(size);
    } catch (err) {
      el.textContent = 'Catalogue unavailable';
      showError(err, 'Loading statistics');
    }
  }

  // --------------------------------------------------------------- wiring

  function loadAll() {
    loadStats();
    loadFilters();
    runQuery();
    refreshForYou();
  }

  function wire() {
    const photo = $('photo');
    photo.addEventListener('change', () => {
      const file = photo.files && photo.files[0];
      usePhoto(file);
      photo.value = ''; // choosing the same file again still works
    });

    const zone = $('dropzone');
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes('Files');
    window.addEventListener('dragenter', (e) => {
      if (!hasFiles(e)) return;
      depth += 1;
      zone.classList.add('dragging');
    });
    window.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove('dragging');
    });
    window.addEventListener('dragover', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    window.addEventListener('drop', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      zone.classList.remove('dragging');
      usePhoto(e.dataTransfer.files[0]);
    });
    window.addEventListener('paste', (e) => {
      const files = e.clipboardData && e.clipboardData.files;
      const image = files && Array.from(files).find((f) => f.type.startsWith('image/'));
      if (image) {
        e.preventDefault();
        usePhoto(image);
      }
    });

    $('clear-filters').addEventListener('click', () => {
      state.filters.clear();
      for (const s of document.querySelectorAll('#filter-fields select')) s.value = '';
      filtersChanged();
      const first = document.querySelector('#filter-fields select');
      if (first) first.focus();
    });

    const diversity = $('diversity');
    diversity.checked = state.diversity;
    diversity.addEventListener('change', () => {
      state.diversity = diversity.checked;
      storageSet(STORE.diversity, state.diversity ? '1' : '');
      runQuery();
      refreshForYou();
    });

    $('back-to-browse').addEventListener('click', showBrowse);
    $('more').addEventListener('click', () => runQuery({ append: true }));

    $('shopper-form').addEventListener('submit', (e) => {
      e.preventDefault();
      setShopper($('shopper-id').value);
    });
    $('new-shopper').addEventListener('click', () => setShopper(newShopperId()));
    $('forget').addEventListener('click', forgetShopper);

    $('error-close').addEventListener('click', hideError);

    const tokenInput = $('token');
    tokenInput.value = state.token;
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      state.token = tokenInput.value.trim();
      storageSet(STORE.token, state.token);
      clearThumbCache();
      hideError();
      $('settings').open = false;
      loadAll();
    });
    $('token-clear').addEventListener('click', () => {
      tokenInput.value = '';
      state.token = '';
      storageSet(STORE.token, '');
      clearThumbCache();
      loadAll();
    });
  }

  function start() {
    wire();
    setShopper(state.shopper); // also loads the shopper's list
    loadStats();
    loadFilters();
    runQuery();
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
