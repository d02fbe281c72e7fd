// Times and durations in words an admin reads at a glance. Pure functions, no DOM.
//
// Durations are measured against the backend's `now` (the /api/status answer), never the browser's
// clock: the two can disagree by minutes, and "until when jobs can run" is the backend's to say.
// Times are shown in the viewer's own time zone and locale (Intl picks both from the browser).

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

/** The viewer's local time of `iso`: "14:32" on the same day as `now`, else with the date. */
export function localTime(iso, now) {
  const when = new Date(iso);
  const options = { hour: '2-digit', minute: '2-digit' };
  if (!sameLocalDay(when, new Date(now))) {
    Object.assign(options, { weekday: 'short', day: 'numeric', month: 'short' });
    if (when.getFullYear() !== new Date(now).getFullYear()) options.year = 'numeric';
  }
  return new Intl.DateTimeFormat(undefined, options).format(when);
}

/** The full local date and time, for a tooltip: "Tuesday 1 December 2026 at 14:32:05 CET". */
export function fullLocalTime(iso) {
  return new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'long' }).format(new Date(iso));
}

/** "page-snapshot" -> "Page snapshot". */
export function jobName(job) {
  const words = String(job || 'unnamed job').replace(/[-_]+/g, ' ').trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}

/** "pagesSeen" -> "pages seen". */
export function fieldName(key) {
  return String(key)
    .replace(/([a-z0-9])([A-Z])/g, '$1 $2')
    .replace(/[-_]+/g, ' ')
    .toLowerCase();
}

/** "3 jobs", "1 job", "no job". */
export function jobCount(count) {
  return count ? plural(count, 'job', 'jobs') : 'no job';
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
