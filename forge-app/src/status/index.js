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
  digest: byId('digest'),
  digestSection: byId('digest').closest('section'),
};

// No job request until the status says the app is installed: an uninstalled site runs no job, so the
// digest's section is not shown for one (the status could not be read: the backend decides).
page.digest.disabled = true;

function offerJobs(state) {
  page.digestSection.hidden = state === 'uninstalled';
  page.digest.disabled = state === 'uninstalled';
}

function unreachable(error) {
  return `Could not reach the backend: ${error && error.message ? error.message : error}`;
}

function showProblem(message) {
  page.verdict.dataset.state = 'error';
  page.verdict.replaceChildren(el('p', { class: 'headline' }, 'The status could not be read.'), el('p', {}, message));
}

/** Show the status; resolves to the backend's `now` of its answer (null if it could not be read). */
async function showStatus() {
  page.refresh.disabled = true;
  page.verdict.setAttribute('aria-busy', 'true');
  try {
    const response = await getStatus();
    if (response.status === 200 && response.body) {
      offerJobs(renderStatus(page, response.body));
      return response.body.now;
    } else {
      showProblem(problemOf(response));
      offerJobs('error');
    }
  } catch (error) {
    showProblem(unreachable(error));
    offerJobs('error');
  } finally {
    page.verdict.removeAttribute('aria-busy');
    page.refresh.disabled = false;
  }
  return null;
}

/** The recent pages, once both they and the status have answered: "today" is the backend's day, as
 * everywhere else on the page (the browser's clock may be off). */
async function showRecentPages(statusNow) {
  const list = byId('recent');
  const item = (...parts) => list.append(el('li', {}, ...parts));
  try {
    const [backendNow, response] = await Promise.all([statusNow, getRecentPages()]);
    list.replaceChildren();
    const body = response.body || {};
    if (response.status !== 200) {
      item(problemOf(response));
      return;
    }
    const now = backendNow || new Date().toISOString();
    for (const found of body.pages || []) {
      const space = found.spaceKey ? ` in ${found.spaceKey}` : '';
      const changed = found.lastModified ? `, changed at ${localTime(found.lastModified, now)}` : '';
      item(found.title || 'Untitled', `${space}${changed}`);
    }
    if (!(body.pages || []).length) item('No page you can see changed this week.');
    if (body.partial) item(`Not the whole list: ${body.partialReason}`);
  } catch (error) {
    list.replaceChildren();
    item(unreachable(error));
  }
}

async function requestDigest() {
  const out = byId('digest-result');
  const button = page.digest;
  button.disabled = true;
  out.textContent = 'Requesting…';
  try {
    const response = await requestJob('space-digest');
    out.textContent =
      response.status === 202
        ? 'Requested. The digest runs in the background; its result shows under "Last result of each job" once it has run (press "Check again").'
        : problemOf(response);
  } catch (error) {
    out.textContent = unreachable(error);
  } finally {
    button.disabled = page.digestSection.hidden;
  }
}

page.refresh.addEventListener('click', showStatus);
page.digest.addEventListener('click', requestDigest);
showRecentPages(showStatus());
