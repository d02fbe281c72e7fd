// Development stand-in for @forge/bridge, for `make local` and the browser tests only (src/build.mjs
// aliases '@forge/bridge' to this file in the dev bundle; the deployed bundle uses the real package).
//
// invokeRemote has the real one's contract: ({ path, method, headers?, body? }) resolves to
// { status, headers, body } with body parsed from JSON. Where Forge would sign a FIT and add the
// tokens, the local stack does it (local/ui_dev.py, loopback only): like the real bridge, this page
// never holds a FIT or a token.
const METHODS = new Set(['GET', 'POST', 'PUT', 'PATCH', 'DELETE']);
const ENDPOINT = '/__dev/invoke-remote';

export async function invokeRemote(input) {
  const { path, method, headers, body } = input || {};
  if (typeof path !== 'string' || !path.startsWith('/') || !METHODS.has(method)) {
    throw new Error(`invokeRemote needs an absolute path and one of ${[...METHODS].join(', ')}`);
  }
  const response = await fetch(ENDPOINT, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ path, method, headers: headers || {}, body }),
  });
  if (!response.ok) {
    throw new Error(`the local stand-in for Forge answered HTTP ${response.status}: ${await response.text()}`);
  }
  return response.json();
}
