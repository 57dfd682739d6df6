// Drives the dashboard of a running `sentinel serve` with Debian's Chromium, for
// crates/sentinel/tests/dashboard.rs, which starts the server, feeds it and checks on its side
// what the page did. The two talk over this process's standard streams, one line each:
//
//   this script → test: `live-open` (signed in, Live page open, stream connected)
//   test → this script: `anomaly-posted` (a snapshot with an anomalous connection was ingested)
//   this script → test: `labelled ID` (the row of that anomaly was labelled "Anomaly")
//   this script → test: `verdict TEXT` (the Malware page's verdict of the uploaded file)
//   this script → test: `yara TEXT` (the YARA match the page shows)
//   this script → test: `acknowledged ID` (the anomaly's alert was acknowledged on the Alerts page)
//   this script → test: `viewer-checked` (a network:read token finds labelling, training and
//                         alerts disabled, each saying the scope it lacks)
//   this script → test: `done`
//
// Environment: SENTINEL_URL (http://127.0.0.1:PORT), SENTINEL_TOKEN (admin),
// SENTINEL_VIEWER_TOKEN (scope network:read only), SENTINEL_UPLOAD (a file
// to upload), SENTINEL_SCREENSHOTS (a directory for one PNG per page), CHROMIUM (the browser,
// default /usr/bin/chromium). Any failure prints the reason and exits non-zero.

import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const url = process.env.SENTINEL_URL;
const token = process.env.SENTINEL_TOKEN;
const viewerToken = process.env.SENTINEL_VIEWER_TOKEN;
const upload = process.env.SENTINEL_UPLOAD;
const screenshots = process.env.SENTINEL_SCREENSHOTS;
const TIMEOUT_MS = 30_000;

const input = createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

async function expectLine(expected) {
  const { value, done } = await lines.next();
  if (done || value.trim() !== expected) throw new Error(`expected "${expected}" from the test, got ${done ? 'end of input' : `"${value}"`}`);
}

function say(line) {
  process.stdout.write(`${line}\n`);
}

async function screenshot(page, name) {
  await page.screenshot({ path: `${screenshots}/${name}.png`, fullPage: true });
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-background-networking'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT_MS);
  // A script error, or anything the Content-Security-Policy refused, fails the run. The
  // browser also logs every 4xx answer ("Failed to load resource"): those the page expects
  // (a wrong token, alerting off) are shown on the page and checked there.
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) {
      problems.push(`console error: ${message.text()}`);
    }
  });

  // Sign in: a wrong token is refused with the server's reason, the right one opens Live.
  await page.goto(url);
  await screenshot(page, 'sign-in');
  await page.fill('#token', 'snt_not-a-token');
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#sign-in-error').filter({ hasText: 'Not signed in' }).waitFor();
  await page.fill('#token', token);
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#live').waitFor({ state: 'visible' });
  await page.locator('#principal').filter({ hasText: 'admin' }).waitFor();
  await page.locator('#live-state').filter({ hasText: 'live' }).waitFor();
  say('live-open');

  // A live anomaly arrives over the WebSocket: found by the filter, explained, labelled.
  await expectLine('anomaly-posted');
  await page.fill('#live-filter', 'dropper');
  const row = page.locator('#live-rows tr.result.anomaly', { hasText: 'dropper' }).first();
  await row.waitFor();
  const id = await row.getAttribute('data-id');
  await row.locator('td').nth(2).click(); // the process cell: a click on the row, not on its buttons
  const details = page.locator(`#live-rows tr.details[data-id="${id}"]`);
  await details.getByText('Why').waitFor();
  await details.locator('input.note').fill('exfiltration seen from the dashboard');
  await row.getByRole('button', { name: 'Anomaly', exact: true }).click();
  await page.locator(`#live-rows tr.result[data-id="${id}"]`).getByText('labelled anomaly').waitFor();
  await screenshot(page, 'live');
  say(`labelled ${id}`);

  // Malware: upload a file, read its verdict, YARA matches and explanation.
  await page.click('#tabs button[data-tab=malware]');
  await page.setInputFiles('#file-input', upload);
  const verdict = page.locator('#malware-result .badge.verdict');
  await verdict.waitFor();
  await page.locator('#malware-result .yara li').first().waitFor();
  await screenshot(page, 'malware');
  say(`verdict ${(await verdict.textContent()).trim()}`);
  say(`yara ${(await page.locator('#malware-result .yara li').first().textContent()).trim()}`);

  // Models: the active version and its rollback buttons.
  await page.click('#tabs button[data-tab=models]');
  await page.locator('#models-summary dd', { hasText: /^ready$/ }).waitFor();
  await page.locator('#model-versions tr.active').waitFor();
  await screenshot(page, 'models');

  // Alerts: the anomaly raised an alert; acknowledged here with a note, it leaves the open ones.
  await page.click('#tabs button[data-tab=alerts]');
  const alert = page.locator('#alert-rows tr', { hasText: 'port 4444' }).filter({ hasText: 'anomaly' }).first();
  await alert.waitFor();
  await screenshot(page, 'alerts');
  const alertId = await alert.getAttribute('data-id');
  await alert.locator('input.note').fill('dropper host isolated');
  await alert.getByRole('button', { name: 'Acknowledge' }).click();
  await page.locator('#alerts-message').filter({ hasText: `alert ${alertId} acknowledged` }).waitFor();
  await page.locator(`#alert-rows tr[data-id="${alertId}"]`).waitFor({ state: 'detached' });
  say(`acknowledged ${alertId}`);

  // Charts: a few samples of /metrics (5 s apart) taken while the test posts traffic.
  await page.click('#tabs button[data-tab=charts]');
  await page.waitForFunction(() => performance.now() > 27_000, null, { timeout: 60_000 });
  await page.waitForTimeout(500);
  await screenshot(page, 'charts');

  // Signing out forgets the token.
  await page.click('#sign-out');
  await page.locator('#sign-in').waitFor({ state: 'visible' });
  const kept = await page.evaluate(() => sessionStorage.getItem('sentinel.token'));
  if (kept !== null) throw new Error('the token is still in session storage after signing out');

  // A token of scope network:read only: it sees, and the page disables what it may not do,
  // saying which scope is missing.
  await page.fill('#token', viewerToken);
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#principal').filter({ hasText: 'network:read' }).waitFor();
  await page.click('#tabs button[data-tab=live]');
  const seen = page.locator('#live-rows tr.result', { hasText: 'dropper' }).first();
  await seen.waitFor();
  const label = seen.getByRole('button', { name: 'Anomaly', exact: true });
  if (!(await label.isDisabled()) || (await label.getAttribute('title')) !== 'your token lacks scope network:feedback') {
    throw new Error('a network:read token may label results on the page');
  }
  await page.click('#tabs button[data-tab=models]');
  if (!(await page.locator('#train').isDisabled())) throw new Error('a network:read token may train on the page');
  await page.click('#tabs button[data-tab=alerts]');
  await page.locator('#alerts-message').filter({ hasText: 'lacks scope alerts:read' }).waitFor();
  await page.click('#sign-out');
  say('viewer-checked');

  if (problems.length > 0) throw new Error(`the page reported errors:\n${problems.join('\n')}`);
  say('done');
} finally {
  await browser.close();
  input.close();
}
