// The token status page (a Custom UI resource): what the admin sees of background jobs and Forge
// tokens for this site, the pages the viewer can see that changed lately, and the digest button.
// Built by esbuild (src/build.mjs) into static/status/status.js, the file the manifest's resource serves.
import { getRecentPages, getStatus, problemOf, requestJob } from './api.js';
import { el, renderStatus } from './render.js';
import { localTime } from './words.js';

const byId = (id) => document.getElementById(id);

const page = {
  verdict: byId('verdict'),
  lastToken: byId('last-token'),
  waiting: byId('waiting'),
  deadLetters: byId('dead-letters'),
  lastResults: byId('last-results'),
  installation: byId('installation'),
  checkedAt: byId('checked-at'),
  refresh: byId('refresh'),
};

function unreachable(error) {
  return `Could not reach the backend: ${error && error.message ? error.message : error}`;
}

function showProblem(message) {
  page.verdict.dataset.state = 'error';
  page.verdict.replaceChildren(el('p', { class: 'headline' }, 'The status could not be read.'), el('p', {}, message));
}

async function showStatus() {
  page.refresh.disabled = true;
  page.verdict.setAttribute('aria-busy', 'true');
  try {
    const response = await getStatus();
    if (response.status === 200 && response.body) {
      renderStatus(page, response.body);
    } else {
      showProblem(problemOf(response));
    }
  } catch (error) {
    showProblem(unreachable(error));
  } finally {
    page.verdict.removeAttribute('aria-busy');
    page.refresh.disabled = false;
  }
}

async function showRecentPages() {
  const list = byId('recent');
  const item = (...parts) => list.append(el('li', {}, ...parts));
  list.replaceChildren();
  try {
    const response = await getRecentPages();
    const body = response.body || {};
    if (response.status !== 200) {
      item(problemOf(response));
      return;
    }
    const now = new Date().toISOString();
    for (const found of body.pages || []) {
      const changed = found.lastModified ? `, changed at ${localTime(found.lastModified, now)}` : '';
      item(found.title || 'Untitled', ` (${found.spaceKey}${changed})`);
    }
    if (!(body.pages || []).length) item('No page you can see changed this week.');
    if (body.partial) item(`Not the whole list: ${body.partialReason}`);
  } catch (error) {
    item(unreachable(error));
  }
}

async function requestDigest() {
  const out = byId('digest-result');
  const button = byId('digest');
  button.disabled = true;
  out.textContent = 'Requesting…';
  try {
    const response = await requestJob('space-digest');
    out.textContent =
      response.status === 202
        ? `Requested. The digest runs in the background (request ${(response.body || {}).requestId}).`
        : problemOf(response);
  } catch (error) {
    out.textContent = unreachable(error);
  } finally {
    button.disabled = false;
  }
}

page.refresh.addEventListener('click', showStatus);
byId('digest').addEventListener('click', requestDigest);
showStatus();
showRecentPages();
