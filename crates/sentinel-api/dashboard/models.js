// The Models page: the network service's state, active model, warm-up and versions
// (`GET /api/v1/models/status`), training at once with its progress (`POST /api/v1/train`,
// `GET /api/v1/train/{id}`), rollback to a stored version (`POST /api/v1/models/rollback`),
// and the malware server's model versions (`GET /status`). Buttons the token's scopes do not
// allow are disabled and say which scope is missing.

import { call, describe, holds } from './api.js';
import { byId, definitions, el, fill, number, time } from './dom.js';

const REFRESH_MS = 5000;
const FOLLOW_MS = 1000;

let refresh = null;
let follow = null;

function message(text) {
  byId('models-error').textContent = text;
}

async function load() {
  if (!holds('network:read')) {
    message('your token lacks scope network:read: the network models cannot be shown');
  } else {
    try {
      render(await call('/api/v1/models/status'));
      message('');
    } catch (error) {
      message(error.status === 404 ? 'the network service is not enabled on this server' : describe(error));
    }
  }
  if (holds('malware:read')) {
    try {
      const status = await call('/status');
      definitions(byId('malware-models'), [
        ['Static model', `${status.models.static_version} (${status.models.static_source})`],
        ['Behaviour model', `${status.models.behaviour_version} (${status.models.behaviour_source})`],
        ['Reloads', `${status.reloads.succeeded} succeeded, ${status.reloads.failed} failed`],
      ]);
    } catch (error) {
      definitions(byId('malware-models'), [['Malware server', describe(error)]]);
    }
  } else {
    definitions(byId('malware-models'), [['Malware server', 'your token lacks scope malware:read']]);
  }
}

function render(status) {
  const model = status.model;
  const warmup = status.warmup ?? {};
  const ensemble = model?.metrics?.find((evaluation) => evaluation.model_name === 'ensemble');
  definitions(byId('models-summary'), [
    ['State', status.state],
    ['Active version', model ? `v${model.version}, trained ${time(model.trained_at)} on ${number(model.training_rows, 0)} rows` : 'none yet'],
    ['Combination', model ? `${model.combination}, target false-positive rate ${number(model.target_false_positive_rate, 4)}` : null],
    ['Held-out accuracy (ensemble)', ensemble ? `${number(ensemble.accuracy, 4)}, false-positive rate ${number(ensemble.false_positive_rate, 4)}` : null],
    ['Learned from feedback', model?.learned_from_feedback ? `${model.learned_from_feedback.labels} labels, ${model.learned_from_feedback.anomalies} anomalies` : 'no'],
    ['Labelled results (feedback window)', status.feedback?.labelled ?? null],
    [
      'Warm-up',
      warmup.complete
        ? 'complete'
        : `${number(warmup.collected_secs, 0)} of ${number(warmup.required_secs, 0)} s, ${number(warmup.rows, 0)} of ${number(warmup.required_rows, 0)} rows`,
    ],
    ['Predictions', `${number(status.predictions_total, 0)} (${number(status.anomalies_total, 0)} anomalies)`],
    ['Collector', status.collector?.unavailable ? `unavailable: ${status.collector.unavailable}` : status.collector?.enabled ? 'this host' : 'off (agents and analysis only)'],
  ]);
  const job = status.training_job;
  if (job) showJob(job);
  const mayTrain = holds('network:train');
  fill(
    byId('model-versions'),
    (status.versions ?? []).map((version) =>
      el(
        'tr',
        { class: version.active ? 'active' : null },
        el('td', {}, `v${version.version}`),
        el('td', {}, time(version.created_at)),
        el('td', { class: 'numeric' }, number(version.training_rows, 0)),
        el('td', {}, version.active ? 'active' : ''),
        el(
          'td',
          {},
          version.active
            ? null
            : el(
                'button',
                {
                  type: 'button',
                  disabled: !mayTrain,
                  title: mayTrain ? `make v${version.version} the active model` : 'your token lacks scope network:train',
                  onclick: () => rollback(version.version),
                },
                'Roll back to this',
              ),
        ),
      ),
    ),
  );
}

function showJob(job) {
  const progress = byId('train-progress');
  progress.hidden = job.state !== 'running';
  progress.value = job.progress ?? 0;
  const outcome = {
    running: `training job ${job.id}: ${job.stage} (${Math.round((job.progress ?? 0) * 100)} %)`,
    succeeded: `training job ${job.id} done: v${job.version} on ${number(job.training_rows, 0)} rows`,
    failed: `training job ${job.id} failed: ${job.error}`,
    cancelled: `training job ${job.id} cancelled`,
  };
  byId('train-state').textContent = outcome[job.state] ?? job.state;
  return job.state === 'running';
}

async function train() {
  try {
    const job = await call('/api/v1/train', { body: {} });
    showJob(job);
    followJob(job.id);
  } catch (error) {
    byId('train-state').textContent = describe(error);
  }
}

function followJob(id) {
  clearTimeout(follow);
  follow = setTimeout(async () => {
    try {
      if (showJob(await call(`/api/v1/train/${id}`))) followJob(id);
      else load();
    } catch (error) {
      byId('train-state').textContent = describe(error);
    }
  }, FOLLOW_MS);
}

async function rollback(version) {
  try {
    const answer = await call('/api/v1/models/rollback', { body: { version } });
    byId('train-state').textContent = `v${answer.active.version} is active`;
  } catch (error) {
    byId('train-state').textContent = describe(error);
  }
  load();
}

byId('train').addEventListener('click', train);

export function start() {
  const mayTrain = holds('network:train');
  byId('train').disabled = !mayTrain;
  byId('train').title = mayTrain ? 'train a new model on the stored history now' : 'your token lacks scope network:train';
}

export function stop() {
  clearInterval(refresh);
  clearTimeout(follow);
  refresh = null;
  fill(byId('models-summary'));
  fill(byId('model-versions'));
  fill(byId('malware-models'));
  byId('train-state').textContent = '';
}

export function show() {
  load();
  clearInterval(refresh);
  // Refreshed while shown only: the status reads the store.
  refresh = setInterval(() => {
    if (byId('models').hidden) clearInterval(refresh);
    else load();
  }, REFRESH_MS);
}
