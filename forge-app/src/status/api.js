// The backend's UI routes, reached through Forge with @forge/bridge's public invokeRemote: Forge adds
// the FIT and the tokens on its side, so this page never sees either. invokeRemote resolves to
// { status, headers, body } with body already parsed from JSON (the routes always answer JSON).
//   GET  /api/status         the installation's token and job state
//   GET  /api/pages/recent   pages the signed-in user can see that changed lately (as that user)
//   POST /api/jobs           a site administrator requests a job (Confluence decides who is one)
import { invokeRemote } from '@forge/bridge';

export function getStatus() {
  return invokeRemote({ path: '/api/status', method: 'GET' });
}

export function getRecentPages() {
  return invokeRemote({ path: '/api/pages/recent?days=7&limit=20', method: 'GET' });
}

export function requestJob(job, args = {}) {
  return invokeRemote({ path: '/api/jobs', method: 'POST', body: { job, args } });
}

/** The message of a non-2xx answer, in the backend's words when it gave some, as a sentence. */
export function problemOf(response) {
  const body = (response && response.body) || {};
  const message = typeof body.message === 'string' ? body.message.trim() : '';
  if (!message) return `The backend answered HTTP ${response ? response.status : '(nothing)'}.`;
  const sentence = message.charAt(0).toUpperCase() + message.slice(1);
  return /[.!?]$/.test(sentence) ? sentence : `${sentence}.`;
}
