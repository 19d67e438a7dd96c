// How the tests read the dashboard's pages: one place for the hooks the templates offer
// (accessible names, roles and data-* attributes), so a markup change is fixed here once.

// The hooks are listed at the top of each template (crates/kiln-server/templates/*.html):
// overview rows tr[data-run-id], badges [data-badge] (class status-<status>), progress
// bars [data-progress-bar][role=progressbar][aria-valuenow], the build page's timeline
// ol[data-timeline] > li[data-step], log lines .log .line, the header's
// [data-unread-count].

/** The row of a build on the overview (`data-run-id`). */
export const buildItem = (page, runId) => page.locator(`[data-run-id="${runId}"]`).first();

/**
 * Reads, inside the page, the state of a build's widgets under `root` (a selector, default
 * the whole document): the status badge's status, the progress bar's value, the number of
 * log lines. Runs in the browser (self-contained, so `page.evaluate` and in-page
 * observers share it).
 */
export function readBuildWidgets(rootSelector) {
  const root = rootSelector ? document.querySelector(rootSelector) : document;
  if (!root) return null;
  const badge = root.querySelector('[data-badge]') || root.querySelector('.badge[class*="status-"]');
  let status = null;
  if (badge) {
    {
      const cls = [...badge.classList].find((c) => c.startsWith('status-'));
      status = cls ? cls.slice('status-'.length) : badge.textContent.trim().toLowerCase();
    }
  }
  let progress = null;
  const bar = root.querySelector('[data-progress-bar]') || root.querySelector('[role="progressbar"]');
  if (bar) {
    const now = bar.getAttribute('aria-valuenow');
    if (now !== null && now !== '') {
      progress = Number(now);
    } else {
      const inner = bar.querySelector('.bar');
      const width = inner && /([\d.]+)%/.exec(inner.style.width || '');
      if (width) progress = Number(width[1]);
    }
  }
  const lines = root.querySelectorAll('.log .line').length;
  return { status, progress, lines };
}

/**
 * Defines `window.__kilnRead` (= readBuildWidgets) in the page, for in-page observers.
 * Evaluated over the DevTools protocol, so a Content-Security-Policy does not stop it.
 */
export const installReader = (page) => page.evaluate(`window.__kilnRead = ${readBuildWidgets.toString()}`);

/** `readBuildWidgets` evaluated in the page. */
export const widgets = (page, rootSelector = null) => page.evaluate(readBuildWidgets, rootSelector);

/** The header's unread count as shown (0 when hidden or not displayed). */
export async function unreadCount(page) {
  return page.evaluate(() => {
    const el = document.querySelector('[data-unread-count]');
    if (!el || el.hidden || getComputedStyle(el).display === 'none') return 0;
    return Number(el.textContent.trim()) || 0;
  });
}

/** Sets a marker on `window` that any navigation or reload would lose. */
export const setMarker = (page) => page.evaluate(() => {
  window.__kilnMarker = 1;
});

/** True while the page was neither reloaded nor navigated since `setMarker`. */
export const markerSurvives = (page) => page.evaluate(() => window.__kilnMarker === 1);
