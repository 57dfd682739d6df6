// The dashboard's entry point: signing in and out, and the tabs. Each tab's module exports
// `start()` (once signed in), `show()` (when its tab opens) and `stop()` (on sign-out).

import { clearToken, describe, setScopes, setToken, token, whoami } from './api.js';
import { byId } from './dom.js';
import * as live from './live.js';
import * as charts from './charts.js';
import * as models from './models.js';
import * as alerts from './alerts.js';
import * as malware from './malware.js';

const PAGES = { live, charts, models, alerts, malware };
let started = false;

function showTab(name) {
  if (!(name in PAGES)) name = 'live';
  for (const [page, module] of Object.entries(PAGES)) {
    const visible = page === name;
    byId(page).hidden = !visible;
    document.querySelector(`#tabs [data-tab="${page}"]`).setAttribute('aria-current', visible ? 'page' : 'false');
    if (visible) module.show();
  }
}

function signedIn(identity) {
  setScopes(identity.scopes);
  byId('principal').textContent = `${identity.principal ?? 'no authentication'} · ${identity.scopes.join(', ')}`;
  byId('sign-in').hidden = true;
  byId('tabs').hidden = false;
  byId('session').hidden = false;
  if (!started) {
    started = true;
    for (const module of Object.values(PAGES)) module.start();
  }
  showTab(location.hash.slice(1));
}

function signOut(message = '') {
  clearToken();
  if (started) {
    for (const module of Object.values(PAGES)) module.stop();
    started = false;
  }
  for (const page of Object.keys(PAGES)) byId(page).hidden = true;
  byId('tabs').hidden = true;
  byId('session').hidden = true;
  byId('sign-in').hidden = false;
  byId('sign-in-error').textContent = message;
  byId('token').value = '';
  byId('token').focus();
}

async function signIn(value) {
  setToken(value);
  try {
    signedIn(await whoami());
  } catch (error) {
    signOut(describe(error));
  }
}

byId('sign-in-form').addEventListener('submit', (event) => {
  event.preventDefault();
  signIn(byId('token').value.trim());
});
byId('sign-out').addEventListener('click', () => signOut());
for (const button of document.querySelectorAll('#tabs button')) {
  button.addEventListener('click', () => {
    location.hash = button.dataset.tab;
  });
}
window.addEventListener('hashchange', () => {
  if (started) showTab(location.hash.slice(1));
});
// A token revoked or expired while the page is open: back to the sign-in form, saying why.
window.addEventListener('sentinel:unauthorized', (event) => signOut(event.detail));

if (token()) {
  signIn(token());
} else {
  signOut();
}
