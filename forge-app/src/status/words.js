// Times, durations, job results and job failures in words an admin reads at a glance. Pure functions,
// no DOM.
//
// Durations are measured against the backend's `now` (the /api/status answer), never the browser's
// clock: the two can disagree by minutes, and "until when jobs can run" is the backend's to say.
// Times are shown in the viewer's own time zone and locale (Intl picks both from the browser), always
// with that zone's offset from UTC, and with the date whenever it is not the viewer's today.

const MINUTE = 60;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** Seconds between two ISO-8601 instants (b - a); NaN if either does not parse. */
export function secondsBetween(a, b) {
  return (Date.parse(b) - Date.parse(a)) / 1000;
}

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

/** A duration in words, rounded down to the minute: "2 h 10 min", "40 min", "3 days 2 h". */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < MINUTE) return 'less than a minute';
  if (s < HOUR) return `${Math.floor(s / MINUTE)} min`;
  if (s < DAY) {
    const hours = Math.floor(s / HOUR);
    const minutes = Math.floor((s % HOUR) / MINUTE);
    return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
  }
  const days = Math.floor(s / DAY);
  const hours = Math.floor((s % DAY) / HOUR);
  return hours ? `${plural(days, 'day', 'days')} ${hours} h` : plural(days, 'day', 'days');
}

/** "2 h 10 min from now", "28 min ago" or "less than a minute ago", relative to `now`. */
export function relative(iso, now) {
  const seconds = secondsBetween(now, iso);
  return seconds > 0 ? `${duration(seconds)} from now` : `${duration(-seconds)} ago`;
}

function sameLocalDay(a, b) {
  return a.getFullYear() === b.getFullYear() && a.getMonth() === b.getMonth() && a.getDate() === b.getDate();
}

const twoDigits = (n) => String(n).padStart(2, '0');

/** The viewer's zone at that instant, as its offset from UTC: "UTC+05:30", "UTC-04:00", "UTC". The
 * offset, not a short name: "IST" or "CST" each name several zones, an offset names one. */
export function zoneOf(when) {
  const minutes = -when.getTimezoneOffset();
  if (!minutes) return 'UTC';
  const sign = minutes > 0 ? '+' : '-';
  const off = Math.abs(minutes);
  return `UTC${sign}${twoDigits(Math.floor(off / 60))}:${twoDigits(off % 60)}`;
}

/** The viewer's local time of `iso` with its zone: "14:32 (UTC+05:30)" on the viewer's day of `now`,
 * else with the date: "Tue 1 Dec, 14:32 (UTC+05:30)", and the year if it is not `now`'s. */
export function localTime(iso, now) {
  const when = new Date(iso);
  const options = { hour: '2-digit', minute: '2-digit' };
  if (!sameLocalDay(when, new Date(now))) {
    Object.assign(options, { weekday: 'short', day: 'numeric', month: 'short' });
    if (when.getFullYear() !== new Date(now).getFullYear()) options.year = 'numeric';
  }
  return `${new Intl.DateTimeFormat(undefined, options).format(when)} (${zoneOf(when)})`;
}

/** The full local date and time, for a tooltip: "Tuesday 1 December 2026 at 14:32:05 CET". */
export function fullLocalTime(iso) {
  return new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' }).format(new Date(iso));
}

/** "3 jobs", "1 job", "no job". */
export function jobCount(count) {
  return count ? plural(count, 'job', 'jobs') : 'no job';
}

// -- what the app's job kinds are and did ---------------------------------------------------------
// Each known kind: its name, what it is for, and its summary in sentences. `summary` is the job's own
// JSON; a renderer names the fields it put in words, and the rest go through `otherDetails`.
const JOB_KINDS = {
  'page-snapshot': {
    name: 'Page snapshot',
    purpose: 'Saves a copy of a page after it is created or changed.',
    words(s) {
      const page = s.pageId !== undefined ? `page ${s.pageId}` : 'the page';
      if (s.found === false) {
        const lines = [`Nothing was saved: ${page} was not found (deleted since, or not visible to the app).`];
        return [lines, ['pageId', 'found']];
      }
      const version = s.version !== undefined && s.version !== null ? `version ${s.version} of ` : '';
      return [[`Saved a copy of ${version}${page}.`], ['pageId', 'found', 'version']];
    },
  },
  'space-digest': {
    name: 'Space digest',
    purpose: 'Lists the pages changed lately in each space.',
    words(s) {
      const lines = [];
      if (typeof s.pages === 'number') {
        const spaces = typeof s.spaces === 'number' ? ` in ${plural(s.spaces, 'space', 'spaces')}` : '';
        lines.push(s.pages ? `Listed ${plural(s.pages, 'changed page', 'changed pages')}${spaces}.` : 'No page had changed.');
      }
      if (s.truncated) {
        const cut = Array.isArray(s.truncatedSpaces) ? s.truncatedSpaces : [];
        const names = cut.length ? ` (${cut.join(', ')})` : '';
        const spaces = plural(s.truncated, 'space', 'spaces');
        lines.push(`The list was shortened for ${spaces}${names}: too many pages to keep them all.`);
      }
      return [lines, ['pages', 'spaces', 'truncated', 'truncatedSpaces']];
    },
  },
  'user-digest': {
    name: 'Personal digest',
    purpose: 'Lists the pages one person can see that changed lately, for that person.',
    words(s) {
      const lines = [];
      if (typeof s.pages === 'number') {
        lines.push(s.pages ? `Listed ${plural(s.pages, 'changed page', 'changed pages')}.` : 'No page had changed.');
      }
      if (s.truncated === true) lines.push('The list was shortened: too many pages to keep them all.');
      return [lines, ['pages', 'truncated']];
    },
  },
  'personal-data-report': {
    name: 'Personal data report',
    purpose:
      "Tells Atlassian which people's accounts the app holds data about, as Atlassian requires, and acts on the answer.",
    words(s) {
      const lines = [];
      if (typeof s.accounts === 'number') {
        const reports = typeof s.reports === 'number' ? ` (${plural(s.reports, 'report', 'reports')} sent)` : '';
        lines.push(`Reported ${plural(s.accounts, 'account', 'accounts')} to Atlassian${reports}.`);
      }
      if (typeof s.closed === 'number') {
        const erased = typeof s.erasedItems === 'number' ? ` (${plural(s.erasedItems, 'item', 'items')} erased)` : '';
        lines.push(`Closed accounts whose data was erased: ${s.closed}${erased}.`);
      }
      if (typeof s.updated === 'number') {
        lines.push(`Updated accounts whose stored profile details were dropped: ${s.updated}.`);
      }
      return [lines, ['accounts', 'reports', 'closed', 'erasedItems', 'updated']];
    },
  },
};

/** "page-snapshot" -> "Page snapshot" (the kind's own name when the page knows it). */
export function jobName(job) {
  const known = JOB_KINDS[job];
  if (known) return known.name;
  const words = String(job || 'unnamed job').replace(/[-_]+/g, ' ').trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** What a job kind is for, in one sentence; '' for a kind the page does not know. */
export function jobPurpose(job) {
  return (JOB_KINDS[job] || {}).purpose || '';
}

/** "pagesSeen" -> "Pages seen". */
export function fieldName(key) {
  const words = String(key)
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/[-_]+/g, ' ')
    .trim()
    .toLowerCase();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// Fields never shown: internal ones (a leading underscore), and whatever would name a request, a
// person, or a credential (an admin cannot act on them, and the page shows nobody's account).
const HIDDEN_FIELD = /^_|request.?id|account|token|secret|password|fit$|jwt|principal|requested.?by|email/i;
// Values that look like an Atlassian account id, a JWT (a FIT or a token) or a bearer header.
const ACCOUNT_ID = /\b\d{6}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|\b[0-9a-f]{24}\b/gi;
const TOKEN_LIKE = /\beyJ[\w-]*(\.[\w-]*){0,2}|\bBearer\s+\S+/g;

/** `text` with anything that looks like an account id or a token replaced by a word. */
export function withoutIdentifiers(text) {
  return String(text).replace(TOKEN_LIKE, '[a token]').replace(ACCOUNT_ID, '[an account]');
}

function valueWords(value) {
  if (Array.isArray(value)) {
    const plain = value.filter((item) => item === null || typeof item !== 'object');
    const shown = plain.slice(0, 5).map(valueWords);
    if (!value.length) return 'none';
    if (plain.length < value.length) return plural(value.length, 'item', 'items');
    return value.length > 5 ? `${shown.join(', ')} and ${value.length - 5} more` : shown.join(', ');
  }
  if (value && typeof value === 'object') return null; // nested details: not for this page
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  return withoutIdentifiers(value);
}

/** The fields no sentence covered, as [label, value] pairs: internal and identifying ones left out. */
export function otherDetails(summary, covered = []) {
  return Object.entries(summary || {})
    .filter(([, value]) => value !== null && value !== undefined)
    .filter(([key]) => !covered.includes(key) && !HIDDEN_FIELD.test(key) && withoutIdentifiers(key) === key)
    .map(([key, value]) => [fieldName(key), valueWords(value)])
    .filter(([, words]) => words !== null);
}

/** A finished job's result: { sentences, details: [[label, value]], shortened }. Only jobs that
 * finished have a result on the page; what failed is in the failures section. */
export function resultWords(job, summary) {
  const s = summary && typeof summary === 'object' ? summary : {};
  const shortened = Boolean(s._truncated);
  const kind = JOB_KINDS[job];
  const [sentences, covered] = kind ? kind.words(s) : [[], []];
  // Every run that called Confluence: what it cost under Atlassian's points-based rate limit.
  if (typeof s.points === 'number') {
    sentences.push(`It used ${plural(s.points, 'point', 'points')} of Atlassian's hourly rate limit.`);
  }
  return { sentences, details: otherDetails(s, [...covered, 'points']), shortened };
}

// -- why a job failed for good, and what the admin can do ------------------------------------------
// The worker's reasons are written for the app's developers ("unknown job 'x'", "job x raised KeyError
// at y.py:12 (gave up after 5 attempts)"). Each rule: the reason's shape, what it means, and whether it
// is the app's own fault (nothing on this site will fix it) or something passing on the way.
const FAILURES = [
  [/^unknown job\b/i, 'The app has no job of this kind, so it could not run it.', 'app'],
  [
    /^bad arguments for job|^job request\b|needs requestedBy|notBefore/i,
    'It was asked to run with settings it cannot use.',
    'app',
  ],
  [/\braised \w+/i, 'An error in the app stopped it.', 'app'],
  [/token|installation not seen yet/i, 'No usable token from Forge came in time for it to run.', 'passing'],
  [/rate limit|\b429\b|points/i, "Atlassian's rate limit kept refusing its calls.", 'passing'],
  [/HTTP 40[134]\b|forbidden|not permitted|permission/i, 'Confluence refused the app access to what it needed.', 'access'],
  [
    /HTTP 5\d\d|unreachable|did not answer|timed? ?out|time left|connection/i,
    'Confluence or Forge did not answer in time.',
    'passing',
  ],
];
const GAVE_UP = /\s*\(gave up after (\d+) attempts\)\s*$/i;

/** The short reference a vendor finds the job by in the app's logs: the first 8 characters of its
 * request id ('' without one). */
export function reference(requestId) {
  const id = String(requestId || '').replace(/[^A-Za-z0-9-]/g, '');
  return id.slice(0, 8);
}

/** A failure in words: { why, whatToDo, detail } from the worker's reason and the request id. */
export function failureWords(reason, requestId) {
  const text = String(reason || '');
  const gaveUp = text.match(GAVE_UP);
  const base = text.replace(GAVE_UP, '');
  const [, meaning, kind] = FAILURES.find(([shape]) => shape.test(base)) || [
    null,
    'It failed in a way that trying again would not fix.',
    'app',
  ];
  const tries = gaveUp ? ` The app tried ${plural(Number(gaveUp[1]), 'time', 'times')}, then stopped.` : '';
  const why = `${meaning}${tries}`;
  const ref = reference(requestId);
  const quoting = ref ? ` and quote the reference ${ref}` : '';
  const vendor = `contact the app's vendor${quoting}`;
  const whatToDo = {
    app: `It will not be retried, and nothing on this site can fix it: ${vendor}.`,
    access: `It will not be retried. Check that the app can still see the space or page it works on; if it can, ${vendor}.`,
    passing: `It will not be retried. If it happens again, ${vendor}.`,
  }[kind];
  return { why, whatToDo, detail: text ? withoutIdentifiers(text) : '' };
}

// Where Forge's calls come from, as lastToken.from names them.
const TOKEN_SOURCES = {
  keepalive: "with Forge's hourly keepalive",
  event: 'with a product event (a page was created or updated)',
  lifecycle: 'when the app was installed or upgraded',
  ui: "when someone opened the app's page",
};

/** How the last token arrived, in words; '' when the backend does not say. */
export function tokenSource(from) {
  return TOKEN_SOURCES[from] || '';
}
