// runledger dashboard: one module for every page. The server sends each page's static shell
// (body[data-page]); this fills it from the API. The token lives in this tab's session
// storage and travels only in the Authorization header: never in a URL, a cookie or a log.

const TOKEN_KEY = 'runledger.token';
const TERMINAL = new Set(['completed', 'failed', 'canceled']);
const PAGE_SIZE = 50;

// ---- token -----------------------------------------------------------------------------

/** A token in the URL fragment (`#access_token=…`, as Supabase redirects) is taken and erased. */
function takeFragmentToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const t = params.get('access_token');
  if (t) {
    sessionStorage.setItem(TOKEN_KEY, t.trim());
    history.replaceState(null, '', location.pathname + location.search);
  }
}

const token = () => sessionStorage.getItem(TOKEN_KEY);

/** The token's claims, read only to choose what to show; the server checks the token. */
function claims(t) {
  try {
    const p = t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(p.padEnd(Math.ceil(p.length / 4) * 4, '=')));
  } catch {
    return null;
  }
}

function role() {
  const r = claims(token() || '')?.role;
  return !r || r === 'authenticated' ? 'customer' : r;
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  const next = location.pathname === '/signin' ? '/' : location.pathname + location.search;
  const q = new URLSearchParams({ next });
  if (reason) q.set('reason', reason);
  location.assign(`/signin?${q}`);
}

// ---- API -------------------------------------------------------------------------------

/** A problem+json answer (RFC 9457), or a transport failure as one. */
class Problem extends Error {
  constructor(status, body) {
    const p = body && typeof body === 'object' ? body : {};
    super(p.detail || p.title || `HTTP ${status}`);
    this.status = status;
    this.type = p.type || '';
    this.title = p.title || `HTTP ${status}`;
    this.detail = p.detail || '';
    this.errors = Array.isArray(p.errors) ? p.errors : [];
  }
}

async function api(path, { method = 'GET', body, headers = {}, raw = false } = {}) {
  const h = { Authorization: `Bearer ${token()}`, ...headers };
  if (body !== undefined) h['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
  } catch (e) {
    throw new Problem(0, { title: 'Network error', detail: String(e.message || e) });
  }
  if (res.status === 401) {
    signOut('The token was refused (expired or invalid). Sign in again.');
    throw new Problem(401, await res.json().catch(() => null));
  }
  if (!res.ok) throw new Problem(res.status, await res.json().catch(() => null));
  if (raw) return res;
  return res.json();
}

// ---- DOM -------------------------------------------------------------------------------

const $ = (sel, root = document) => root.querySelector(sel);

/** An element; text children are text nodes, so no data ever becomes markup. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const time = (iso) => (iso ? new Date(iso).toLocaleString() : '');

function badge(status) {
  return h('span', { class: `badge s-${status}` }, status);
}

function showProblem(el, p) {
  el.replaceChildren(
    h('strong', {}, p.title),
    p.detail ? ` ${p.detail}` : '',
    p.errors.length ? h('ul', {}, p.errors.map((e) => h('li', {}, typeof e === 'string' ? e : e.detail || e.message || JSON.stringify(e)))) : '',
  );
  el.hidden = false;
}

// ---- SSE over fetch --------------------------------------------------------------------

/**
 * Follows `/v1/jobs/stream` with the token in a header (EventSource cannot send one). After a
 * drop it reconnects with Last-Event-ID, so no change is missed or repeated; `event: reset`
 * means the server cannot resume from there: the page reloads its data.
 */
class JobStream {
  constructor({ onJob, onReset, onOpen }) {
    this.onJob = onJob;
    this.onReset = onReset;
    this.onOpen = onOpen || (() => {});
    this.last = null;
    this.connects = 0;
  }

  async run() {
    let delay = 250;
    for (;;) {
      try {
        const headers = { Authorization: `Bearer ${token()}`, Accept: 'text/event-stream' };
        if (this.last !== null) headers['Last-Event-ID'] = this.last;
        const res = await fetch('/v1/jobs/stream', { headers, cache: 'no-store' });
        if (res.status === 401) return signOut('The token was refused (expired or invalid). Sign in again.');
        if (!res.ok) throw new Error(`stream answered ${res.status}`);
        live(true);
        delay = 250;
        this.connects += 1;
        await this.onOpen(this.connects);
        await this.read(res.body.pipeThrough(new TextDecoderStream()).getReader());
      } catch {
        // Dropped or refused: reconnect below.
      }
      live(false);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 8000);
    }
  }

  async read(reader) {
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        this.dispatch(block);
      }
    }
  }

  dispatch(block) {
    let id = null;
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      else if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (id !== null) this.last = id;
    if (event === 'job') {
      try {
        this.onJob(JSON.parse(data.join('\n')));
      } catch {
        // Not a job change this page understands: skip it.
      }
    } else if (event === 'reset') {
      this.onReset();
    }
  }
}

function live(on) {
  const el = $('#live');
  if (!el) return;
  el.textContent = on ? 'live' : 'reconnecting';
  el.classList.toggle('on', on);
}

// ---- usage -----------------------------------------------------------------------------

let subscription = null;

async function loadSubscription() {
  subscription = subscription || (await api('/v1/subscription'));
  return subscription;
}

function upgradeButtons(box) {
  const plans = subscription?.checkout || [];
  const current = subscription?.plan;
  const offered = plans.filter((p) => p !== current);
  box.replaceChildren(
    ...offered.map((plan) =>
      h('button', { type: 'button', onclick: (e) => upgrade(plan, e.target) }, `Upgrade to ${plan}`),
    ),
  );
  box.hidden = offered.length === 0;
  return offered.length > 0;
}

async function upgrade(plan, button) {
  button.disabled = true;
  try {
    const session = await api('/v1/billing/checkout', { method: 'POST', body: { plan } });
    location.assign(session.url);
  } catch (p) {
    button.disabled = false;
    const note = h('p', { class: 'error', role: 'alert' });
    showProblem(note, p);
    button.after(note);
  }
}

async function renderUsage() {
  const u = await api('/v1/usage');
  const meter = $('#usage-meter');
  const used = u.consumed + u.reserved;
  const max = u.limit ?? Math.max(used, 1);
  meter.setAttribute('aria-valuenow', String(u.consumed));
  meter.setAttribute('aria-valuemax', String(u.limit ?? used));
  meter.dataset.consumed = String(u.consumed);
  meter.dataset.reserved = String(u.reserved);
  $('.consumed', meter).style.width = `${Math.min(100, (100 * u.consumed) / max)}%`;
  $('.reserved', meter).style.width = `${Math.min(100, (100 * u.reserved) / max)}%`;
  const limit = u.limit === null ? 'unlimited' : `of ${u.limit}`;
  const running = u.concurrency_limit === null ? `${u.running} running` : `${u.running} of ${u.concurrency_limit} running`;
  $('#usage-text').textContent = `${u.consumed} consumed + ${u.reserved} reserved ${limit} (${u.plan}) · ${running}`;
  meter.setAttribute('aria-valuetext', $('#usage-text').textContent);
  await loadSubscription().catch(() => null);
  const box = $('.upgrade');
  if (box) upgradeButtons(box);
  return u;
}

/** Refreshes the usage at most every 300 ms while jobs end. */
function usageRefresher() {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => {
      timer = null;
      renderUsage().catch(() => {});
    }, 300);
  };
}

// ---- jobs page -------------------------------------------------------------------------

async function jobsPage() {
  const params = new URLSearchParams(location.search);
  const status = params.get('status') || '';
  const cursor = params.get('cursor');
  const body = $('#jobs tbody');
  const rows = new Map();
  let more = false;
  const filter = $('#status-filter');
  filter.value = status;
  filter.addEventListener('change', () => {
    const q = filter.value ? `?status=${encodeURIComponent(filter.value)}` : '';
    location.assign(`/${q}`);
  });

  function cells(row, j) {
    const [, task, st, attempts, created, updated] = row.children;
    if (j.task_type && !task.textContent) task.textContent = j.task_type;
    if (j.created_at && !row.dataset.created) {
      created.textContent = time(j.created_at);
      row.dataset.created = String(Date.parse(j.created_at));
    }
    if (row.dataset.updated && Date.parse(j.updated_at) < Number(row.dataset.updated)) return;
    st.replaceChildren(badge(j.status));
    attempts.textContent = String(j.attempts);
    updated.textContent = time(j.updated_at);
    row.dataset.status = j.status;
    row.dataset.updated = String(Date.parse(j.updated_at));
  }

  function rowFor(j) {
    const row = h('tr', { 'data-id': j.id },
      h('td', {}, h('a', { href: `/jobs/${j.id}`, title: j.id }, h('code', {}, j.id.slice(0, 8)))),
      h('td', {}), h('td', {}), h('td', {}), h('td', {}), h('td', { class: 'wide' }));
    cells(row, j);
    rows.set(j.id, row);
    return row;
  }

  const matches = (s) => !status || s === status;

  /** Newest first; a row whose creation time is not known yet is a new job: on top. */
  function place(row) {
    if (!row.dataset.created) {
      body.prepend(row);
      return;
    }
    const mine = Number(row.dataset.created);
    for (const other of body.children) {
      if (other !== row && other.dataset.created && Number(other.dataset.created) < mine) {
        other.before(row);
        return;
      }
    }
    body.append(row);
  }

  function empty() {
    $('#jobs-empty').hidden = body.children.length > 0;
  }

  async function load() {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (status) q.set('status', status);
    if (cursor) q.set('cursor', cursor);
    const page = await api(`/v1/jobs?${q}`);
    body.replaceChildren();
    rows.clear();
    for (const j of page.jobs) body.append(rowFor(j));
    more = Boolean(page.next_cursor);
    const older = $('#older');
    older.hidden = !more;
    if (page.next_cursor) {
      const n = new URLSearchParams({ cursor: page.next_cursor });
      if (status) n.set('status', status);
      older.href = `/?${n}`;
    }
    const newest = $('#newest');
    newest.hidden = !cursor;
    newest.href = status ? `/?status=${encodeURIComponent(status)}` : '/';
    empty();
  }

  const refreshUsage = usageRefresher();
  let loaded = false;
  let early = [];

  function apply(j) {
    if (!loaded) {
      early.push(j);
      return;
    }
    if (TERMINAL.has(j.status) || j.status === 'queued') refreshUsage();
    const row = rows.get(j.id);
    if (row) {
      if (Date.parse(j.updated_at) < Number(row.dataset.updated)) return;
      if (!matches(j.status)) {
        row.remove();
        rows.delete(j.id);
        empty();
        return;
      }
      cells(row, j);
      return;
    }
    // A job not on this page. A new one (its first change) goes on top at once, its task type
    // and creation time following from its view; another shows only if it falls on this page.
    if (cursor || !matches(j.status)) return;
    const fresh = j.attempts === 0 && (j.status === 'queued' || j.status === 'scheduled');
    // Unfiltered, the first page held the newest jobs and took every new one since: an
    // unknown job that is not new is older than the page, so no request is made for it
    // (another user's burst draining would otherwise cost one request per change).
    if (!fresh && !status && more) return;
    const added = rowFor(j);
    if (fresh) {
      place(added);
      empty();
    }
    api(`/v1/jobs/${j.id}`).then((view) => {
      if (rows.get(j.id) !== added) return;
      cells(added, view);
      const last = body.lastElementChild;
      const below = more && last && Number(added.dataset.created) < Number(last.dataset.created);
      if (below || !matches(added.dataset.status)) {
        added.remove();
        rows.delete(j.id);
      } else {
        place(added);
      }
      empty();
    }).catch(() => {});
  }

  /** The list read again; the changes that arrive meanwhile are applied on top of it. */
  async function reload() {
    loaded = false;
    await load();
    loaded = true;
    const pending = early;
    early = [];
    for (const j of pending) apply(j);
  }

  const stream = new JobStream({
    onJob: apply,
    onReset: () => reload().catch(() => {}),
    // The first connection starts from now: the list read after it holds everything older.
    onOpen: () => (loaded ? null : reload()),
  });
  stream.run();
  renderUsage().catch((p) => { $('#usage-text').textContent = p.message; });
  submitForm(refreshUsage);
}

// ---- submit form -----------------------------------------------------------------------

const EXAMPLES = {
  noop: {},
  sleep: { ms: 1000 },
  'http.request': { method: 'GET', url: 'https://example.com/' },
  'browser.screenshot': { url: 'https://example.com/' },
  'browser.pdf': { url: 'https://example.com/' },
  'browser.extract': { url: 'https://example.com/', selector: 'h1' },
  'agent.run': { prompt: 'Summarize https://example.com/ in one sentence.' },
};

async function taskTypes() {
  try {
    const doc = await fetch('/openapi.json').then((r) => r.json());
    const types = (doc.components.schemas.SubmitJob.oneOf || [])
      .map((v) => v.properties?.task_type?.const)
      .filter(Boolean);
    if (types.length) return types;
  } catch {
    // The built-in types below.
  }
  return ['noop', 'sleep'];
}

async function submitForm(onSubmitted) {
  const form = $('#submit-form');
  const select = $('#task-type');
  const payload = $('#payload');
  const result = $('#submit-result');
  let touched = false;
  payload.addEventListener('input', () => { touched = true; });
  select.addEventListener('change', () => {
    if (!touched) payload.value = JSON.stringify(EXAMPLES[select.value] ?? {}, null, 0);
  });
  select.replaceChildren(...(await taskTypes()).map((t) => h('option', { value: t }, t)));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    result.replaceChildren();
    result.className = '';
    let body;
    try {
      body = { task_type: select.value, payload: JSON.parse(payload.value) };
    } catch (err) {
      result.className = 'error';
      result.replaceChildren(h('strong', {}, 'The payload is not valid JSON.'), ` ${err.message}`);
      payload.setAttribute('aria-invalid', 'true');
      payload.focus();
      return;
    }
    payload.removeAttribute('aria-invalid');
    const attempts = $('#max-attempts').value;
    if (attempts) body.max_attempts = Number(attempts);
    const button = $('button[type=submit]', form);
    button.disabled = true;
    try {
      const r = await api('/v1/jobs', { method: 'POST', body });
      result.className = 'ok';
      result.replaceChildren('Submitted ', h('a', { href: `/jobs/${r.job_id}` }, h('code', {}, r.job_id.slice(0, 8))), ` (${r.status}).`);
      onSubmitted();
    } catch (p) {
      result.className = 'error';
      if (p.status === 402) {
        result.replaceChildren(h('strong', { class: 'limit' }, 'Plan limit reached.'), p.detail ? ` ${p.detail}` : '');
        await loadSubscription().catch(() => null);
        const box = h('div', { class: 'upgrade' });
        if (upgradeButtons(box)) result.append(box);
      } else {
        showProblem(result, p);
      }
    } finally {
      button.disabled = false;
    }
  });
}

// ---- job page --------------------------------------------------------------------------

async function jobPage() {
  const id = decodeURIComponent(location.pathname.split('/')[2] || '');
  $('#job-id').textContent = id;
  const shown = new Set();

  async function render() {
    let j;
    try {
      j = await api(`/v1/jobs/${encodeURIComponent(id)}`);
    } catch (p) {
      showProblem($('#job-error'), p);
      return;
    }
    const fields = [
      ['Status', badge(j.status)],
      ['Task type', j.task_type],
      ['Attempts', String(j.attempts)],
      ['Correlation id', h('code', {}, j.correlation_id)],
      ['Created', time(j.created_at)],
      ['Updated', time(j.updated_at)],
    ];
    if (j.queued_behind !== undefined) fields.push(['Queued behind', `${j.queued_behind} of your jobs`]);
    $('#job-fields').replaceChildren(...fields.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
    $('#job-fields').dataset.status = j.status;
    $('#cancel-box').hidden = TERMINAL.has(j.status);
    const outcome = j.error ?? j.result;
    $('#job-outcome').textContent = outcome === undefined ? 'Not ended yet.' : typeof outcome === 'string' ? outcome : JSON.stringify(outcome, null, 2);
    for (const a of j.result?.artifacts || []) {
      if (shown.has(a.name)) continue;
      shown.add(a.name);
      artifact(id, a);
    }
  }

  $('#cancel').addEventListener('click', async (e) => {
    e.target.disabled = true;
    try {
      await api(`/v1/jobs/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
      $('#cancel-result').textContent = 'Canceled.';
    } catch (p) {
      showProblem($('#cancel-result'), p);
    } finally {
      e.target.disabled = false;
    }
    render();
  });

  new JobStream({ onJob: (c) => { if (c.id === id) render(); }, onReset: render, onOpen: (n) => (n === 1 ? render() : null) }).run();
}

/** An artifact, fetched with the token: an image shown inline, anything else a download. */
async function artifact(id, a) {
  $('#artifacts-box').hidden = false;
  const li = h('li', {}, `${a.name} (${a.content_type}, ${a.bytes} bytes) `);
  $('#artifacts').append(li);
  try {
    const res = await api(`/v1/jobs/${encodeURIComponent(id)}/artifacts/${encodeURIComponent(a.name)}`, { raw: true });
    const url = URL.createObjectURL(await res.blob());
    if (a.content_type.startsWith('image/')) {
      li.append(h('img', { src: url, alt: `Artifact ${a.name}`, class: 'artifact' }));
    } else {
      li.append(h('a', { href: url, download: a.name }, `Download ${a.name}`));
    }
  } catch (p) {
    li.append(h('span', { class: 'error' }, p.message));
  }
}

// ---- usage page ------------------------------------------------------------------------

async function usagePage() {
  const u = await renderUsage();
  const sub = await loadSubscription();
  $('#plan-fields').replaceChildren(
    h('dt', {}, 'Plan'), h('dd', {}, sub.plan),
    h('dt', {}, 'Status'), h('dd', {}, sub.status),
    h('dt', {}, 'Period'), h('dd', {}, `${time(u.period_start)} – ${time(u.period_end)}`),
  );
  const { periods } = await api('/v1/usage/history');
  $('#history tbody').replaceChildren(...periods.map((p) => h('tr', {},
    h('td', {}, new Date(p.period_start).toISOString().slice(0, 7)), h('td', {}, p.plan),
    h('td', {}, String(p.consumed)), h('td', {}, String(p.released)),
    h('td', {}, p.limit === null ? 'unlimited' : String(p.limit)), h('td', {}, p.closed ? 'yes' : 'no'))));
  chart($('#history-chart'), periods.slice(0, 12).reverse());
  const refresh = usageRefresher();
  new JobStream({ onJob: (c) => { if (TERMINAL.has(c.status)) refresh(); }, onReset: refresh }).run();
}

/** Consumed units per period as bars (an SVG drawn here: no chart library). */
function chart(box, periods) {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  const w = 40;
  const height = 120;
  const max = Math.max(1, ...periods.map((p) => p.consumed));
  svg.setAttribute('viewBox', `0 0 ${Math.max(1, periods.length) * w} ${height + 20}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `Consumed units in the last ${periods.length} periods`);
  periods.forEach((p, i) => {
    const bar = document.createElementNS(ns, 'rect');
    const hgt = Math.round((height * p.consumed) / max);
    bar.setAttribute('x', String(i * w + 6));
    bar.setAttribute('y', String(height - hgt));
    bar.setAttribute('width', String(w - 12));
    bar.setAttribute('height', String(hgt));
    const title = document.createElementNS(ns, 'title');
    title.textContent = `${new Date(p.period_start).toISOString().slice(0, 7)}: ${p.consumed}`;
    bar.append(title);
    const label = document.createElementNS(ns, 'text');
    label.setAttribute('x', String(i * w + w / 2));
    label.setAttribute('y', String(height + 14));
    label.setAttribute('text-anchor', 'middle');
    label.textContent = new Date(p.period_start).toISOString().slice(5, 7);
    svg.append(bar, label);
  });
  box.replaceChildren(svg);
}

// ---- audit page ------------------------------------------------------------------------

function auditPage() {
  const form = $('#audit-form');
  const month = $('#audit-period');
  const params = new URLSearchParams(location.search);
  month.value = params.get('period') || new Date().toISOString().slice(0, 7);
  if (params.get('user')) $('#audit-user').value = params.get('user');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const user = $('#audit-user').value.trim();
    const out = $('#audit-result');
    const err = $('#audit-error');
    err.hidden = true;
    out.replaceChildren('Replaying…');
    try {
      const r = await api(`/v1/audit/usage/${encodeURIComponent(user)}?period=${encodeURIComponent(month.value)}`);
      out.replaceChildren(...(r.periods.length ? r.periods.map(ledger) : [h('p', {}, 'No ledger for this user in that month.')]));
    } catch (p) {
      out.replaceChildren();
      showProblem(err, p);
    }
  });
  if (params.get('user')) form.requestSubmit();
}

function ledger(p) {
  const verdict = p.chain_verified
    ? h('span', { class: 'badge s-completed verdict' }, 'chain verified')
    : h('span', { class: 'badge s-failed verdict' }, `chain broken${p.chain_break ? `: ${p.chain_break.reason} at unit ${p.chain_break.index}` : ''}`);
  const compare = p.projection
    ? p.matches_projection
      ? h('span', { class: 'badge s-completed match' }, 'matches the projection')
      : h('span', { class: 'badge s-failed match' }, `differs from the projection (projection: ${p.projection.consumed} consumed)`)
    : h('span', { class: 'badge match' }, 'no projection row');
  return h('section', { class: 'card ledger' },
    h('h2', {}, `Period from ${time(p.period_start)}`),
    h('p', {}, verdict, ' ', compare),
    h('dl', {},
      h('dt', {}, 'Events'), h('dd', {}, String(p.events)),
      h('dt', {}, 'Consumed'), h('dd', {}, String(p.consumed)),
      h('dt', {}, 'Reserved'), h('dd', {}, String(p.reserved)),
      h('dt', {}, 'Released'), h('dd', {}, String(p.released)),
      h('dt', {}, 'Chain head'), h('dd', {}, h('code', {}, p.chain_head || '—'))));
}

// ---- sign-in and start -----------------------------------------------------------------

function signinPage() {
  const params = new URLSearchParams(location.search);
  const err = $('#signin-error');
  if (params.get('reason')) {
    err.textContent = params.get('reason');
    err.hidden = false;
  }
  $('#signin-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('#token-input').value.trim();
    if (!claims(t)) {
      err.textContent = 'That is not a JWT (three base64url parts separated by dots).';
      err.hidden = false;
      return;
    }
    sessionStorage.setItem(TOKEN_KEY, t);
    const next = params.get('next');
    location.assign(next && next.startsWith('/') && !next.startsWith('//') ? next : '/');
  });
}

function header() {
  const c = claims(token());
  const r = role();
  $('#who').textContent = r === 'customer' ? `user ${String(c?.sub || '').slice(0, 8)}` : `${r} ${String(c?.sub || '').slice(0, 8)}`;
  const out = $('#signout');
  out.hidden = false;
  out.addEventListener('click', () => signOut());
  const auditor = r === 'auditor' || r === 'admin';
  for (const li of document.querySelectorAll('nav [data-role]')) {
    li.hidden = (li.dataset.role === 'auditor') !== auditor;
  }
}

const PAGES = { jobs: jobsPage, job: jobPage, usage: usagePage, audit: auditPage };
const CUSTOMER_PAGES = new Set(['jobs', 'job', 'usage']);

function start() {
  takeFragmentToken();
  const page = document.body.dataset.page;
  if (page === 'signin') return signinPage();
  if (!token()) return signOut();
  header();
  const r = role();
  if (CUSTOMER_PAGES.has(page) && r !== 'customer') {
    if (r === 'auditor' || r === 'admin') return location.replace('/audit');
    $('#main').replaceChildren(h('p', { class: 'error' }, 'This token is not a customer\'s: sign in with a customer token.'));
    return;
  }
  PAGES[page]?.().catch((p) => {
    const note = h('div', { class: 'error', role: 'alert' });
    showProblem(note, p instanceof Problem ? p : new Problem(0, { title: 'Error', detail: String(p) }));
    $('#main').prepend(note);
  });
}

start();
