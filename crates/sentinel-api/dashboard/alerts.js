// The Alerts page: the alerts raised (`GET /api/v1/alerts`), their deliveries to each channel,
// acknowledgement with an optional note (`POST /api/v1/alerts/{id}/acknowledge`), and a test
// alert to one channel (`POST /api/v1/alerts/test?channel=NAME`). A server without alerting
// answers 404, and the page says so.

import { call, describe, holds } from './api.js';
import { byId, el, fill, number, time } from './dom.js';

const REFRESH_MS = 10000;
let refresh = null;

function message(text) {
  byId('alerts-message').textContent = text;
}

async function load() {
  if (!holds('alerts:read')) {
    message('your token lacks scope alerts:read: alerts cannot be shown');
    return;
  }
  const state = byId('alerts-state').value;
  try {
    const answer = await call(`/api/v1/alerts?state=${encodeURIComponent(state)}&limit=200`);
    render(answer.alerts);
    message(answer.alerts.length === 0 ? `no ${state === 'all' ? '' : `${state} `}alert` : '');
  } catch (error) {
    fill(byId('alert-rows'));
    message(error.status === 404 ? 'alerts are not enabled on this server' : describe(error));
  }
}

function render(alerts) {
  const mayAcknowledge = holds('alerts:write');
  fill(
    byId('alert-rows'),
    alerts.map((alert) =>
      el(
        'tr',
        { class: `severity-${alert.severity}`, 'data-id': alert.id },
        el('td', {}, time(alert.raised_at), alert.last_raised_at !== alert.raised_at ? el('div', { class: 'hint' }, `last ${time(alert.last_raised_at)}`) : null),
        el('td', {}, el('span', { class: `badge ${alert.severity === 'critical' ? 'bad' : 'warn'}` }, alert.severity)),
        el('td', {}, alert.rule, el('div', { class: 'hint' }, alert.key)),
        el(
          'td',
          {},
          alert.summary,
          details(alert.details ?? {}),
        ),
        el('td', { class: 'numeric' }, alert.repeats),
        el(
          'td',
          {},
          (alert.deliveries ?? []).length === 0 ? el('span', { class: 'hint' }, 'no channel') : null,
          (alert.deliveries ?? []).map((delivery) =>
            el(
              'div',
              { class: `delivery ${delivery.state}`, title: delivery.last_error ?? '' },
              `${delivery.channel}: ${delivery.state} (${delivery.attempts} attempt${delivery.attempts === 1 ? '' : 's'})`,
              delivery.last_error ? ` — ${delivery.last_error}` : '',
            ),
          ),
        ),
        el(
          'td',
          {},
          alert.acknowledged_at
            ? [
                `acknowledged ${time(alert.acknowledged_at)}${alert.acknowledged_by ? ` by ${alert.acknowledged_by}` : ''}`,
                alert.acknowledgement_note ? el('div', { class: 'hint' }, alert.acknowledgement_note) : null,
              ]
            : acknowledgeControls(alert, mayAcknowledge),
        ),
      ),
    ),
  );
}

/** The alert's details of one value each (the summary says the rest), or nothing. */
function details(fields) {
  const simple = Object.entries(fields).filter(([, value]) => ['string', 'number', 'boolean'].includes(typeof value));
  if (simple.length === 0) return null;
  return el('div', { class: 'hint' }, simple.map(([name, value]) => `${name}: ${typeof value === 'number' ? number(value) : value}`).join(' · '));
}

function acknowledgeControls(alert, mayAcknowledge) {
  const note = el('input', { class: 'note', placeholder: 'note (optional)', maxlength: 1000 });
  const button = el(
    'button',
    {
      type: 'button',
      disabled: !mayAcknowledge,
      title: mayAcknowledge ? 'acknowledge this alert' : 'your token lacks scope alerts:write',
      onclick: async () => {
        button.disabled = true;
        const body = note.value.trim() ? { note: note.value.trim() } : {};
        let outcome;
        try {
          await call(`/api/v1/alerts/${encodeURIComponent(alert.id)}/acknowledge`, { body });
          outcome = `alert ${alert.id} acknowledged`;
        } catch (error) {
          outcome = describe(error);
        }
        await load();
        message(outcome);
      },
    },
    'Acknowledge',
  );
  return [note, button];
}

async function sendTest() {
  const channel = byId('alerts-test-channel').value.trim();
  if (!channel) {
    message('name the channel to test');
    return;
  }
  let outcome;
  try {
    await call(`/api/v1/alerts/test?channel=${encodeURIComponent(channel)}`, { body: {} });
    outcome = `test alert sent to ${channel}`;
  } catch (error) {
    outcome = error.status === 404 && !error.message.includes('channel') ? 'alerts are not enabled on this server' : describe(error);
  }
  await load();
  message(outcome);
}

byId('alerts-state').addEventListener('change', load);
byId('alerts-refresh').addEventListener('click', load);
byId('alerts-test').addEventListener('click', sendTest);

export function start() {
  const mayWrite = holds('alerts:write');
  byId('alerts-test').disabled = !mayWrite;
  byId('alerts-test').title = mayWrite ? 'send a test alert to this channel' : 'your token lacks scope alerts:write';
}

export function stop() {
  clearInterval(refresh);
  refresh = null;
  fill(byId('alert-rows'));
  message('');
}

export function show() {
  load();
  clearInterval(refresh);
  refresh = setInterval(() => {
    if (byId('alerts').hidden || document.activeElement?.matches('#alert-rows input')) return;
    load();
  }, REFRESH_MS);
}
