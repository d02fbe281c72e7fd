// The /api/status answer in sentences and tables. Every value goes in with textContent (never
// innerHTML): job reasons and summaries may quote user content such as page titles.
import {
  duration,
  failureWords,
  fullLocalTime,
  jobCount,
  jobName,
  jobPurpose,
  localTime,
  relative,
  resultWords,
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

/** A <time> showing the local time of `iso` with its zone, its full date in the tooltip. */
export function timeOf(iso, now) {
  return el('time', { datetime: iso, title: fullLocalTime(iso) }, localTime(iso, now));
}

/** "14:32 (UTC+05:30), 2 h 10 min from now" as nodes. */
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
  "Forge hands the app a fresh token with each of its calls: the hourly keepalive, a page being created or changed, or someone opening this page.";

function verdictLines(state, status) {
  const { now } = status;
  const jobs = status.jobs || {};
  const until = jobs.canRunUntil;
  const minimum = duration(status.tokenMinValiditySeconds || 0);
  switch (state) {
    case 'uninstalled':
      return [
        ['Its tokens were deleted when it was uninstalled, so no background job runs for this site and none can be requested. Installing the app again starts afresh.'],
      ];
    case 'healthy':
      return [
        ['Jobs can run until ', ...when(until, now), '.'],
        ["Forge's hourly keepalive normally brings a fresh token before then: nothing needs doing."],
      ];
    case 'expiring':
      return [
        ['Jobs can run until ', ...when(until, now), '.'],
        [`${NEXT_TOKEN} If none comes before then, jobs wait for the next token and run when it arrives: none is lost.`],
      ];
    default: {
      const lines = [];
      const stopped = (status.lastToken || {}).usableByJobsUntil;
      if (stopped && secondsBetween(now, stopped) <= 0) {
        lines.push([
          'Jobs stopped being able to run at ',
          ...when(stopped, now),
          `: the last token from Forge no longer lasts the ${minimum} a job needs.`,
        ]);
      } else {
        lines.push([`The app has no token from Forge that lasts the ${minimum} a job needs.`]);
      }
      lines.push([`Jobs wait, and run as soon as a token arrives: none is lost. ${NEXT_TOKEN}`]);
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

/** Lines as block elements of one table cell. */
const lines = (...texts) => texts.filter(Boolean).map((text) => el('div', {}, ...[text].flat()));

export function renderDeadLetters(container, status) {
  const dead = (status.jobs || {}).deadLettered || [];
  if (!dead.length) {
    container.replaceChildren(el('p', {}, 'No job of this site has failed for good.'));
    return;
  }
  const verb = dead.length === 1 ? 'has' : 'have';
  const order = dead.length > 1 ? '; newest first' : '';
  const intro = el(
    'p',
    {},
    `${jobCount(dead.length)} ${verb} failed and will not be tried again${order}. Other jobs are not affected.`,
  );
  const rows = dead.map((job) => {
    const words = failureWords(job.reason, job.requestId);
    const detail = words.detail
      ? el('details', {}, el('summary', {}, 'Details for the vendor'), el('p', {}, words.detail))
      : null;
    const failed = job.at ? ['Failed at ', ...when(job.at, status.now), '.'] : 'When it failed is not recorded.';
    return [lines(jobName(job.job), failed), lines(words.why, detail), lines(words.whatToDo)];
  });
  container.replaceChildren(intro, table('dead-letters-heading', ['What failed', 'Why', 'What you can do'], rows));
}

/** A finished job's result in sentences, then its other counts labelled in words. */
export function resultOf(job, summary) {
  const words = resultWords(job, summary);
  const parts = [el('div', {}, ['Done.', ...words.sentences].join(' '))];
  if (words.details.length) {
    const pairs = words.details.flatMap(([label, value]) => [el('dt', {}, label), el('dd', {}, value)]);
    parts.push(el('dl', { class: 'summary' }, ...pairs));
  }
  if (words.shortened) parts.push(el('div', {}, '(Result shortened: its details were too long to keep.)'));
  return parts;
}

export function renderLastResults(container, status) {
  const results = (status.jobs || {}).lastResults || [];
  if (!results.length) {
    container.replaceChildren(el('p', {}, 'No job has finished for this site yet.'));
    return;
  }
  const rows = results.map((result) => [
    lines(jobName(result.job), jobPurpose(result.job)),
    result.finishedAt ? when(result.finishedAt, status.now) : 'not recorded',
    resultOf(result.job, result.summary),
  ]);
  container.replaceChildren(table('last-results-heading', ['What ran', 'Finished', 'Outcome'], rows));
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
  page.checkedAt.replaceChildren('Checked at ', timeOf(status.now, status.now), ", by the backend's clock.");
  return state;
}
