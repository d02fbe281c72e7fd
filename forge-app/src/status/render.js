// The /api/status answer in sentences and tables. Every value goes in with textContent (never
// innerHTML): job reasons and summaries may quote user content such as page titles.
import {
  duration,
  fieldName,
  fullLocalTime,
  jobCount,
  jobName,
  localTime,
  relative,
  secondsBetween,
  tokenSource,
} from './words.js';

// Less than this left and the page says "not for long": Forge's keepalive runs hourly, so a token
// with under an hour to go may well be the last one before a gap.
export const EXPIRING_SOON_S = 3600;

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== ''));
  return node;
}

/** A <time> showing the local time of `iso`, its full date in the tooltip. */
function timeOf(iso, now) {
  return el('time', { datetime: iso, title: fullLocalTime(iso) }, localTime(iso, now));
}

/** "14:32, 2 h 10 min from now" as nodes. */
function when(iso, now) {
  return [timeOf(iso, now), `, ${relative(iso, now)}`];
}

/** Which of the four states the page is in: uninstalled, no-token, expiring or healthy. */
export function stateOf(status) {
  const jobs = status.jobs || {};
  if ((status.installation || {}).status === 'uninstalled') return 'uninstalled';
  if (!jobs.canRun || !jobs.canRunUntil) return 'no-token';
  return secondsBetween(status.now, jobs.canRunUntil) < EXPIRING_SOON_S ? 'expiring' : 'healthy';
}

const HEADLINES = {
  healthy: 'Background jobs can run.',
  expiring: 'Background jobs can run, but not for long.',
  'no-token': 'Background jobs cannot run now.',
  uninstalled: 'The app is uninstalled from this site.',
};

const NEXT_TOKEN =
  "Forge delivers a fresh token with its next call to the app: the hourly keepalive, a page event, or someone opening this page.";

function verdictLines(state, status) {
  const { now } = status;
  const jobs = status.jobs || {};
  const until = jobs.canRunUntil;
  const minimum = duration(status.tokenMinValiditySeconds || 0);
  switch (state) {
    case 'uninstalled':
      return [
        ["Its tokens were deleted when it was uninstalled, so no background job runs for this site. Installing the app again starts afresh."],
      ];
    case 'healthy':
      return [['Jobs can run until ', ...when(until, now), '.']];
    case 'expiring':
      return [
        ['Jobs can run until ', ...when(until, now), '.'],
        [`If no fresh token arrives before then, jobs wait for the next one. ${NEXT_TOKEN}`],
      ];
    default: {
      const lines = [];
      if (until && secondsBetween(now, until) <= 0) {
        lines.push(['The last token stopped being usable by jobs at ', ...when(until, now), '.']);
      } else {
        lines.push([`No stored app token is valid for the ${minimum} a job needs.`]);
      }
      lines.push([`Jobs wait for a token and run as soon as one arrives. ${NEXT_TOKEN}`]);
      return lines;
    }
  }
}

export function renderVerdict(container, status) {
  const state = stateOf(status);
  container.dataset.state = state;
  const headline = el('p', { class: 'headline' }, HEADLINES[state]);
  container.replaceChildren(headline, ...verdictLines(state, status).map((parts) => el('p', {}, ...parts)));
  if ((status.installation || {}).status === 'unknown') {
    container.append(
      el('p', {}, 'The backend has no record of this app being installed on this site: no install event has reached it yet.'),
    );
  }
  return state;
}

export function renderLastToken(container, status) {
  const last = status.lastToken || {};
  if (!last.at) {
    const uninstalled = (status.installation || {}).status === 'uninstalled';
    container.replaceChildren(
      uninstalled
        ? 'None kept: the tokens were deleted when the app was uninstalled.'
        : 'No token has arrived from Forge for this site yet.',
    );
    return;
  }
  const source = tokenSource(last.from);
  container.replaceChildren('The last token arrived at ', ...when(last.at, status.now), source ? `, ${source}.` : '.');
}

export function renderWaiting(container, status) {
  const jobs = status.jobs || {};
  const waiting = jobs.waitingForToken || 0;
  const verb = waiting === 1 ? 'is' : 'are';
  const sentences = [
    waiting
      ? `${jobCount(waiting)} ${verb} waiting for a token. They run within seconds of the next token Forge delivers, and are not lost if none comes soon.`
      : 'No job is waiting for a token.',
  ];
  const quota = jobs.waitingForQuota;
  if (quota && quota.until) {
    // Atlassian's points-based rate limit: jobs wait for the next hour's quota instead of failing.
    sentences.push(
      ` Background jobs are waiting for Atlassian's rate limit: ${quota.reason}. They resume from `,
      ...when(quota.until, status.now),
      ', and none is lost.',
    );
  }
  container.replaceChildren(...sentences);
}

function table(labelId, headers, rows) {
  return el(
    'table',
    { 'aria-labelledby': labelId },
    el('thead', {}, el('tr', {}, ...headers.map((header) => el('th', { scope: 'col' }, header)))),
    el('tbody', {}, ...rows.map((cells) => el('tr', {}, ...cells.map((cell) => el('td', {}, ...[cell].flat()))))),
  );
}

export function renderDeadLetters(container, status) {
  const dead = (status.jobs || {}).deadLettered || [];
  if (!dead.length) {
    container.replaceChildren(el('p', {}, 'No job of this site is in the dead-letter queue.'));
    return;
  }
  const intro = el(
    'p',
    {},
    `${jobCount(dead.length)} went to the dead-letter queue and will not run again unless redriven from it. The reason says why; newest first.`,
  );
  const rows = dead.map((job) => [
    jobName(job.job),
    job.reason || 'no reason recorded',
    job.at ? when(job.at, status.now) : 'unknown time',
    el('code', {}, job.requestId || ''),
  ]);
  container.replaceChildren(intro, table('dead-letters-heading', ['Job', 'Reason', 'When', 'Request id'], rows));
}

function summaryValue(value) {
  if (Array.isArray(value)) {
    const shown = value.slice(0, 5).map((item) => (typeof item === 'object' ? JSON.stringify(item) : String(item)));
    return value.length > 5 ? `${shown.join(', ')} and ${value.length - 5} more` : shown.join(', ') || 'none';
  }
  if (value && typeof value === 'object') return JSON.stringify(value);
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  return String(value);
}

/** A result summary as "field: value" lines. */
export function summaryList(summary) {
  const entries = Object.entries(summary || {}).filter(([key, value]) => value !== null && key !== '_truncated');
  if (summary && summary._truncated) return el('p', {}, 'The summary was too long to keep.');
  if (!entries.length) return el('p', {}, 'No details.');
  return el(
    'dl',
    { class: 'summary' },
    ...entries.flatMap(([key, value]) => [el('dt', {}, fieldName(key)), el('dd', {}, summaryValue(value))]),
  );
}

export function renderLastResults(container, status) {
  const results = (status.jobs || {}).lastResults || [];
  if (!results.length) {
    container.replaceChildren(el('p', {}, 'No job has finished for this site yet.'));
    return;
  }
  const rows = results.map((result) => [
    jobName(result.job),
    result.finishedAt ? when(result.finishedAt, status.now) : 'unknown time',
    summaryList(result.summary),
  ]);
  container.replaceChildren(table('last-results-heading', ['Job', 'Finished', 'What it did'], rows));
}

export function renderInstallation(container, status) {
  const installation = status.installation || {};
  const installedAt = installation.installedAt;
  const parts = {
    active: installedAt ? ['Installed at ', ...when(installedAt, status.now), '.'] : ['Installed.'],
    uninstalled: installedAt
      ? ['Uninstalled. It had been installed at ', ...when(installedAt, status.now), '.']
      : ['Uninstalled.'],
  }[installation.status] || ['Not known to the backend: no install event has arrived for this site.'];
  container.replaceChildren(...parts);
}

/** Everything the status answer says, into the page's sections. Returns the state shown. */
export function renderStatus(page, status) {
  const state = renderVerdict(page.verdict, status);
  renderLastToken(page.lastToken, status);
  renderWaiting(page.waiting, status);
  renderDeadLetters(page.deadLetters, status);
  renderLastResults(page.lastResults, status);
  renderInstallation(page.installation, status);
  page.checkedAt.replaceChildren('Checked at ', timeOf(status.now, status.now), " (by the backend's clock).");
  return state;
}
