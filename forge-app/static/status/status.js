// Calls the backend's GET /api/status through Forge (FIT + tokens are added by Forge, never seen here).
//
// With a bundler this file would be:
//   import { invokeRemote } from '@forge/bridge';
//   const response = await invokeRemote({ path: '/api/status', method: 'GET' });
// This page has no build step, so it sends the same bridge message that @forge/bridge 7.2.0's
// invokeRemote sends (out/invoke-endpoint/invoke-endpoint.js) to the bridge Forge injects into the frame.
// Switch to the import above as soon as the UI grows a bundler.

async function invokeRemote(input) {
  const bridge = globalThis.__bridge;
  if (!bridge || typeof bridge.callBridge !== 'function') {
    throw new Error('No Forge bridge: this page only works inside Confluence');
  }
  const reply = (await bridge.callBridge('invoke', { ...input, invokeType: 'ui-remote-fetch' })) || {};
  return { ...(reply.success ? reply.payload : reply.error) };
}

const out = document.getElementById('status');
try {
  const response = await invokeRemote({ path: '/api/status', method: 'GET' });
  out.textContent = JSON.stringify({ status: response.status, body: response.body }, null, 2);
} catch (error) {
  out.textContent = `Could not reach the backend: ${error && error.message ? error.message : error}`;
}
