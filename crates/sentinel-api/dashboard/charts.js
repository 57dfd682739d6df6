// The Charts page: the process's `/metrics` (Prometheus text) sampled every few seconds while
// the dashboard is signed in, turned into rates between samples and drawn on canvases by this
// module. The latest sample is shared with the other pages (`latestMetrics`, and the event
// `sentinel:metrics`): the Malware page reads VirusTotal's counters from it.

import { call, describe, holds } from './api.js';
import { byId } from './dom.js';

const SAMPLE_MS = 5000;
/** Half an hour of samples. */
const MAX_POINTS = 360;

let timer = null;
let previous = null; // {at, metrics}
let latest = null;
let series = { anomalyRate: [], predictions: [], latency: [], alerts: [] };
let alertsEnabled = true;

/** The series of a Prometheus text exposition: `[{name, labels, value}]`. */
export function parsePrometheus(text) {
  const samples = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    if (match[2]) {
      const pattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
      for (const label of match[2].matchAll(pattern)) labels[label[1]] = label[2].replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** The sum of the series named `name` whose labels `accept`, or null when there is none. */
export function total(metrics, name, accept = () => true) {
  const matching = metrics.filter((sample) => sample.name === name && accept(sample.labels));
  return matching.length === 0 ? null : matching.reduce((sum, sample) => sum + sample.value, 0);
}

/** The last `/metrics` sample, or null. */
export function latestMetrics() {
  return latest;
}

async function openAlerts() {
  if (!alertsEnabled || !holds('alerts:read')) return null;
  try {
    const answer = await call('/api/v1/alerts?state=open&limit=1000');
    return answer.alerts.length;
  } catch (error) {
    if (error.status === 404) alertsEnabled = false;
    return null;
  }
}

async function sample() {
  let metrics;
  try {
    metrics = parsePrometheus(await call('/metrics'));
  } catch (error) {
    byId('charts-error').textContent = describe(error);
    return;
  }
  byId('charts-error').textContent = '';
  const at = Date.now();
  const alerts = await openAlerts();
  latest = metrics;
  window.dispatchEvent(new CustomEvent('sentinel:metrics', { detail: metrics }));
  if (previous) {
    const seconds = (at - previous.at) / 1000;
    const delta = (name, accept) => (total(metrics, name, accept) ?? 0) - (total(previous.metrics, name, accept) ?? 0);
    const predicted = delta('predictions_total');
    const anomalies = delta('anomalies_detected');
    // The WebSocket's "duration" is its upgrade only; every route else is a request answered.
    const api = (labels) => labels.route !== '/ws/realtime' && labels.route !== '/metrics';
    const answered = delta('request_duration_seconds_count', api);
    const spent = delta('request_duration_seconds_sum', api);
    push('predictions', at, Math.max(0, predicted / seconds));
    push('anomalyRate', at, predicted > 0 ? (100 * Math.max(0, anomalies)) / predicted : null);
    push('latency', at, answered > 0 ? (1000 * spent) / answered : null);
    push('alerts', at, alerts);
  }
  previous = { at, metrics };
  if (!byId('charts').hidden) draw();
}

function push(name, at, value) {
  series[name].push({ at, value });
  if (series[name].length > MAX_POINTS) series[name].shift();
}

export function start() {
  // Tried whatever the scopes: /metrics is open to everyone on a loopback listener.
  sample();
  timer = setInterval(sample, SAMPLE_MS);
}

export function stop() {
  clearInterval(timer);
  timer = null;
  previous = null;
  latest = null;
  alertsEnabled = true;
  series = { anomalyRate: [], predictions: [], latency: [], alerts: [] };
}

export function show() {
  draw();
}

function draw() {
  plot(byId('chart-anomaly-rate'), series.anomalyRate, '%');
  plot(byId('chart-predictions'), series.predictions, '/s');
  plot(byId('chart-latency'), series.latency, 'ms');
  plot(byId('chart-alerts'), series.alerts, '', alertsEnabled ? null : 'alerts are not enabled on this server');
}

/** A round upper bound for an axis reaching `value`. */
function ceiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((step) => step * power).find((bound) => bound >= value);
}

/** Draws `points` as a line over time on `canvas`, the y axis in `unit`. */
function plot(canvas, points, unit, message = null) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext('2d');
  context.scale(ratio, ratio);
  context.clearRect(0, 0, width, height);
  const style = getComputedStyle(canvas);
  const ink = style.color;
  const accent = style.getPropertyValue('--accent').trim() || ink;
  context.font = '12px system-ui, sans-serif';
  context.fillStyle = ink;
  const values = points.filter((point) => point.value !== null);
  if (message || values.length === 0) {
    context.fillText(message ?? 'no value yet: a sample every 5 s', 12, height / 2);
    return;
  }
  const left = 48;
  const right = width - 8;
  const top = 8;
  const bottom = height - 22;
  const maximum = ceiling(Math.max(...values.map((point) => point.value)));
  const first = points[0].at;
  const last = points[points.length - 1].at;
  const span = Math.max(last - first, SAMPLE_MS);
  const x = (at) => left + ((at - first) / span) * (right - left);
  const y = (value) => bottom - (value / maximum) * (bottom - top);
  // Axes and their labels.
  context.strokeStyle = ink;
  context.globalAlpha = 0.3;
  context.beginPath();
  for (const fraction of [0, 0.5, 1]) {
    context.moveTo(left, y(maximum * fraction));
    context.lineTo(right, y(maximum * fraction));
  }
  context.stroke();
  context.globalAlpha = 1;
  context.textAlign = 'right';
  for (const fraction of [0, 0.5, 1]) context.fillText(`${+(maximum * fraction).toPrecision(3)}${unit}`, left - 4, y(maximum * fraction) + 4);
  context.textAlign = 'left';
  context.fillText(new Date(first).toLocaleTimeString(), left, height - 6);
  context.textAlign = 'right';
  context.fillText(new Date(last).toLocaleTimeString(), right, height - 6);
  // The line, broken where a sample had no value.
  context.strokeStyle = accent;
  context.lineWidth = 2;
  context.beginPath();
  let drawing = false;
  for (const point of points) {
    if (point.value === null) {
      drawing = false;
      continue;
    }
    if (drawing) context.lineTo(x(point.at), y(point.value));
    else context.moveTo(x(point.at), y(point.value));
    drawing = true;
  }
  context.stroke();
  // Each sample as a dot, so that a lone one shows too.
  context.fillStyle = accent;
  for (const point of values) {
    context.beginPath();
    context.arc(x(point.at), y(point.value), 2.5, 0, 2 * Math.PI);
    context.fill();
  }
  const now = values[values.length - 1].value;
  context.fillStyle = accent;
  context.textAlign = 'right';
  context.fillText(`now ${+now.toPrecision(3)}${unit}`, right, top + 12);
}
