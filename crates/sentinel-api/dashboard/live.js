// The Live page: results of the network service as they arrive on `/ws/realtime` (after the
// recent ones from `/api/v1/predictions/recent`), newest first, filtered on the page, each
// expandable to its explanation and labelled with one click (`POST /api/v1/feedback`).

import { call, describe, holds, token, websocketUrl } from './api.js';
import { byId, el, fill, number, time } from './dom.js';

/** Results kept in memory; older ones leave the page. */
const MAX_RESULTS = 1000;
const RECONNECT_MS = 3000;

let results = []; // newest first
let labels = new Map(); // result id → 'anomaly' | 'false_positive'
let expanded = new Set(); // keys of the rows showing their explanation
let notes = new Map(); // result id → the note being written (rows are redrawn as results arrive)
let socket = null;
let reconnect = null;
let running = false;
let renderPending = false;
let sequence = 0;

function key(result) {
  return result.id ?? `unstored-${result.sequence}`;
}

function add(result) {
  result.sequence = sequence++;
  results.unshift(result);
  if (results.length > MAX_RESULTS) results.length = MAX_RESULTS;
}

function setState(text) {
  byId('live-state').textContent = text;
}

function connect() {
  if (!running) return;
  // Browsers cannot set headers on a WebSocket: the token travels as the subprotocols
  // `bearer, TOKEN`, and the server answers with `bearer`.
  socket = new WebSocket(websocketUrl('/ws/realtime'), ['bearer', token()]);
  socket.addEventListener('open', () => setState('● live'));
  socket.addEventListener('message', (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (typeof message.lagged === 'number') {
      setState(`missed ${message.lagged} results (too slow): reconnecting`);
      return;
    }
    add(message);
    scheduleRender();
  });
  socket.addEventListener('close', () => {
    socket = null;
    if (!running) return;
    setState('○ stream closed: reconnecting…');
    reconnect = setTimeout(connect, RECONNECT_MS);
  });
}

async function loadRecent() {
  try {
    // The recent anomalies apart: on a busy service, the last results are mostly normal ones.
    const [anomalies, latest] = await Promise.all([
      call('/api/v1/predictions/recent?anomalies_only=true&limit=200'),
      call('/api/v1/predictions/recent?limit=200'),
    ]);
    // Results the stream already brought are not added twice.
    const known = new Set(results.map((result) => result.id).filter((id) => id !== undefined));
    for (const result of [...anomalies.results, ...latest.results]) {
      if (result.id !== undefined && known.has(result.id)) continue;
      if (result.id !== undefined) known.add(result.id);
      add(result);
    }
    results.sort((a, b) => String(b.observed_at).localeCompare(String(a.observed_at)) || b.sequence - a.sequence);
    if (results.length > MAX_RESULTS) results.length = MAX_RESULTS;
    scheduleRender();
  } catch (error) {
    setState(error.status === 404 ? 'the network service is not enabled on this server' : describe(error));
  }
}

export function start() {
  running = true;
  if (!holds('network:read')) {
    setState('your token lacks scope network:read: no live results');
    return;
  }
  connect();
  loadRecent();
}

export function stop() {
  running = false;
  clearTimeout(reconnect);
  socket?.close();
  socket = null;
  results = [];
  labels = new Map();
  expanded = new Set();
  notes = new Map();
  fill(byId('live-rows'));
  setState('');
}

export function show() {
  scheduleRender();
  byId('live-filter').focus();
}

function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  // At most a few renders a second, however fast results arrive.
  setTimeout(() => {
    renderPending = false;
    // Not while a note is being typed: redrawing would take its focus away.
    if (document.activeElement?.matches('#live-rows input')) scheduleRender();
    else render();
  }, 200);
}

function accepts(result, text, minScore, anomaliesOnly) {
  if (anomaliesOnly && !result.is_anomaly) return false;
  if (minScore !== null && !(result.score >= minScore)) return false;
  if (!text) return true;
  const connection = result.connection ?? {};
  return [connection.host, connection.process_name, connection.pid, connection.remote, connection.local]
    .some((field) => field !== undefined && field !== null && String(field).toLowerCase().includes(text));
}

function render() {
  const text = byId('live-filter').value.trim().toLowerCase();
  const minText = byId('live-min-score').value.trim();
  const minScore = minText === '' ? null : Number(minText);
  const anomaliesOnly = byId('live-anomalies-only').checked;
  const shown = results.filter((result) => accepts(result, text, minScore, anomaliesOnly)).slice(0, 300);
  fill(byId('live-rows'), shown.flatMap((result) => rows(result)));
  byId('live-empty').hidden = shown.length > 0;
}

function rows(result) {
  const connection = result.connection ?? {};
  const id = key(result);
  const open = expanded.has(id);
  const row = el(
    'tr',
    {
      class: `result${result.is_anomaly ? ' anomaly' : ''}${labels.has(result.id) ? ' labelled' : ''}`,
      'data-id': result.id,
      'aria-expanded': open ? 'true' : 'false',
      tabindex: 0,
      onclick: () => toggle(id),
      onkeydown: (event) => {
        if (event.target === event.currentTarget && (event.key === 'Enter' || event.key === ' ')) {
          event.preventDefault();
          toggle(id);
        }
      },
    },
    el('td', {}, time(result.observed_at)),
    el('td', {}, connection.host ?? '—'),
    el('td', {}, connection.process_name ?? '(unknown)', connection.pid ? ` [${connection.pid}]` : ''),
    el('td', {}, connection.remote ?? '—'),
    el('td', { class: 'numeric' }, `${number(result.score)} / ${number(result.threshold)}`),
    el('td', {}, el('span', { class: result.is_anomaly ? 'badge bad' : 'badge good' }, result.is_anomaly ? 'anomaly' : 'normal')),
    el('td', { class: 'label-cell' }, labelControls(result)),
  );
  return open ? [row, details(result)] : [row];
}

/** Shows or hides the explanation of the row `id`. */
function toggle(id) {
  if (expanded.has(id)) expanded.delete(id);
  else expanded.add(id);
  render();
}

function labelControls(result) {
  const label = labels.get(result.id);
  const mayLabel = holds('network:feedback');
  const disabledReason =
    result.id === undefined ? 'this result was not stored: it cannot be labelled' : mayLabel ? null : 'your token lacks scope network:feedback';
  const button = (verdict, text) =>
    el(
      'button',
      {
        type: 'button',
        class: `label ${verdict}`,
        'aria-pressed': label === verdict ? 'true' : 'false',
        disabled: disabledReason !== null,
        title: disabledReason ?? `label this result ${text.toLowerCase()}`,
        onclick: (event) => {
          event.stopPropagation();
          sendLabel(result, verdict, event.currentTarget);
        },
      },
      text,
    );
  return [
    button('anomaly', 'Anomaly'),
    button('false_positive', 'False positive'),
    label ? el('span', { class: 'labelled-as' }, `labelled ${label === 'anomaly' ? 'anomaly' : 'false positive'}`) : null,
  ];
}

async function sendLabel(result, verdict, button) {
  const note = notes.get(result.id)?.trim();
  const label = { id: result.id, verdict };
  if (note) label.note = note;
  button.disabled = true;
  try {
    await call('/api/v1/feedback', { body: { labels: [label] } });
    labels.set(result.id, verdict);
    setState(`result ${result.id} labelled ${verdict === 'anomaly' ? 'anomaly' : 'false positive'}`);
  } catch (error) {
    setState(`label not stored: ${describe(error)}`);
  }
  render();
}

function details(result) {
  const connection = result.connection ?? {};
  const explanation = result.explanation ?? [];
  return el(
    'tr',
    { class: 'details', 'data-id': result.id },
    el(
      'td',
      { colspan: 7 },
      el('h4', {}, 'Why'),
      explanation.length === 0
        ? el('p', {}, 'No feature is far from training.')
        : el(
            'table',
            { class: 'explanation' },
            el('thead', {}, el('tr', {}, el('th', {}, 'Feature'), el('th', {}, 'Value'), el('th', {}, 'Training median'), el('th', {}, 'Deviation (σ)'))),
            el(
              'tbody',
              {},
              explanation.map((item) =>
                el(
                  'tr',
                  {},
                  el('td', {}, item.feature),
                  el('td', {}, typeof item.value === 'number' ? number(item.value) : String(item.value)),
                  el('td', {}, item.baseline === null ? 'category never seen in training' : number(item.baseline)),
                  el('td', {}, number(item.deviation, 1)),
                ),
              ),
            ),
          ),
      el(
        'p',
        {},
        'Models: ',
        (result.models ?? []).map((model) =>
          el('span', { class: model.is_anomaly ? 'model flagged' : 'model' }, `${model.model} ${number(model.score)} (threshold ${number(model.threshold)})`),
        ),
        ` · confidence ${number(result.confidence, 2)} · ${result.source} · model v${result.model_version} · id ${result.id ?? '—'}`,
      ),
      el('p', {}, `${connection.protocol ?? ''} ${connection.local ?? ''} → ${connection.remote ?? ''} · ${connection.state ?? ''} · ${connection.change ?? ''}`),
      result.id === undefined
        ? null
        : el(
            'label',
            {},
            'Note for the label ',
            el('input', {
              class: 'note',
              maxlength: 1000,
              value: notes.get(result.id) ?? '',
              onclick: (event) => event.stopPropagation(),
              oninput: (event) => notes.set(result.id, event.currentTarget.value),
            }),
          ),
    ),
  );
}

for (const id of ['live-filter', 'live-min-score', 'live-anomalies-only']) {
  byId(id).addEventListener('input', () => render());
}
