// Calls the backend's UI routes through Forge (the FIT and tokens are added by Forge, never seen here):
//   GET  /api/status         the installation's token state
//   GET  /api/pages/recent   pages the signed-in user can see that changed lately (as that user)
//   POST /api/jobs           a site administrator requests a job (Confluence decides who is one)
//
// With a bundler this file would use:
//   import { invokeRemote } from '@forge/bridge';
// This page has no build step, so it sends the same bridge message that @forge/bridge 7.2.0's
// invokeRemote sends (out/invoke-endpoint/invoke-endpoint.js) to the bridge Forge injects into the frame.

async function invokeRemote(input) {
  const bridge = globalThis.__bridge;
  if (!bridge || typeof bridge.callBridge !== 'function') {
    throw new Error('No Forge bridge: this page only works inside Confluence');
  }
  const reply = (await bridge.callBridge('invoke', { ...input, invokeType: 'ui-remote-fetch' })) || {};
  return { ...(reply.success ? reply.payload : reply.error) };
}

function problem(error) {
  return `Could not reach the backend: ${error && error.message ? error.message : error}`;
}

async function showStatus() {
  const out = document.getElementById('status');
  try {
    const response = await invokeRemote({ path: '/api/status', method: 'GET' });
    out.textContent = JSON.stringify({ status: response.status, body: response.body }, null, 2);
  } catch (error) {
    out.textContent = problem(error);
  }
}

async function showRecentPages() {
  const list = document.getElementById('recent');
  list.replaceChildren();
  const item = (text) => {
    const li = document.createElement('li');
    li.textContent = text; // textContent, never innerHTML: titles are user content
    list.append(li);
  };
  try {
    const response = await invokeRemote({ path: '/api/pages/recent?days=7&limit=20', method: 'GET' });
    const body = response.body || {};
    if (response.status !== 200) {
      item(body.message || `The backend answered ${response.status}`);
      return;
    }
    for (const page of body.pages || []) {
      item(`${page.title} (${page.spaceKey}, ${page.lastModified || 'unknown time'})`);
    }
    if (!(body.pages || []).length) item('No page changed this week.');
    if (body.partial) item(`(not the whole list: ${body.partialReason})`);
  } catch (error) {
    item(problem(error));
  }
}

async function requestDigest() {
  const out = document.getElementById('digest-result');
  out.textContent = 'Requesting...';
  try {
    const response = await invokeRemote({ path: '/api/jobs', method: 'POST', body: { job: 'space-digest', args: {} } });
    const body = response.body || {};
    out.textContent = response.status === 202 ? `Requested (${body.requestId}).` : body.message || `HTTP ${response.status}`;
  } catch (error) {
    out.textContent = problem(error);
  }
}

document.getElementById('digest').addEventListener('click', requestDigest);
await Promise.all([showStatus(), showRecentPages()]);
