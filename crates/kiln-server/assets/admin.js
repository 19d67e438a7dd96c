// Kiln dashboard: the header's unread count, and the agents, queue, notifications,
// deployments and settings pages (web/fleet.rs, web/notifications.rs, web/deployments.rs,
// web/settings/). Pages work without it.
//
// - [data-unread-count] (every page): refreshed from /api/v1/notifications/stats every
//   15 s while the page is visible, at once when it becomes visible again, and whenever
//   a script dispatches `kiln:build-ended` on document (a build page or overview whose
//   stream reports a build end), since that is when notifications arrive.
// - [data-live="…"] regions (agents, queue, a project's deployments): there is no fleet event stream, so while
//   the page is visible it is refetched every 5 s and the region's markup replaced with
//   the server's — one renderer for the page with and without JavaScript.
// - time[data-ago]: "3 s ago", kept fresh every second.
// - form[data-api] (inbox): sent to the JSON API, then the row and count are updated in
//   place; if the call fails the form is submitted normally.
// - form[data-confirm]: asks first. button[data-copy]: copies a shown-once secret.
"use strict";

const KILN_UNREAD_EVERY_MS = 15000;
const KILN_LIVE_EVERY_MS = 5000;

/** Sets the header's unread badge. */
function kilnShowUnread(count) {
  document.querySelectorAll("[data-unread-count]").forEach((el) => {
    el.textContent = String(count);
    el.hidden = count <= 0;
  });
}

/** Reads the unread count from the API and shows it. */
async function kilnRefreshUnread() {
  if (!document.querySelector("[data-unread-count]")) return;
  try {
    const stats = await kilnApi("GET", "/api/v1/notifications/stats");
    kilnShowUnread(stats.unread);
  } catch (_) {
    // Signed out or offline: leave the last figure.
  }
}

/**
 * The [data-live="name"] regions. Only named ones: the build page's log section carries a
 * bare data-live (its own stream keeps it current), which must not be swapped.
 */
const KILN_LIVE_REGIONS = '[data-live]:not([data-live=""])';

/** Replaces each [data-live="name"] region with the same region of a fresh copy of the page. */
async function kilnRefreshLive() {
  const regions = document.querySelectorAll(KILN_LIVE_REGIONS);
  if (regions.length === 0) return;
  const response = await fetch(location.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
  if (!response.ok || response.redirected) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  regions.forEach((region) => {
    const replacement = fresh.querySelector(`[data-live="${region.dataset.live}"]`);
    // Ages tick every second on both sides; only a real change replaces the markup, so
    // keyboard focus and text selection inside the region survive quiet refreshes.
    if (replacement && kilnLiveKey(replacement) !== kilnLiveKey(region)) {
      region.innerHTML = replacement.innerHTML;
    }
  });
  kilnRefreshAges();
}

/** A region's markup with its "N s ago" texts left out, for comparing two copies. */
function kilnLiveKey(region) {
  const copy = region.cloneNode(true);
  copy.querySelectorAll("time[data-ago]").forEach((el) => { el.textContent = ""; });
  return copy.innerHTML;
}

/** Renders every time[data-ago] relative to now. */
function kilnRefreshAges() {
  document.querySelectorAll("time[data-ago]").forEach((el) => {
    const at = Date.parse(el.getAttribute("datetime"));
    if (!Number.isNaN(at)) el.textContent = kilnAgo(at);
  });
}

/** Runs `task` every `ms` while the page is visible, and at once when it becomes visible. */
function kilnWhileVisible(task, ms) {
  let timer = null;
  const run = () => Promise.resolve(task()).catch(() => {});
  const start = () => {
    if (timer === null) timer = setInterval(run, ms);
  };
  const stop = () => {
    if (timer !== null) clearInterval(timer);
    timer = null;
  };
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) {
      stop();
    } else {
      run();
      start();
    }
  });
  if (!document.hidden) start();
}

/** An inbox form answered by the API: update its notification in place. */
async function kilnInboxAction(form) {
  const action = form.dataset.action;
  await kilnApi("POST", form.dataset.api);
  const show = new URLSearchParams(location.search).get("show") || "all";
  const rows = action === "read-all"
    ? document.querySelectorAll("[data-notification-id]")
    : [form.closest("[data-notification-id]")];
  rows.forEach((row) => {
    if (!row) return;
    if (action === "archive" || show === "unread") {
      row.remove();
      return;
    }
    row.dataset.unread = "false";
    row.classList.remove("unread");
    const state = row.querySelector("[data-read-state]");
    if (state) state.textContent = "Read";
    const read = row.querySelector('form[data-action="read"]');
    if (read) read.remove();
  });
  const list = document.querySelector("ul.inbox");
  if (list && list.children.length === 0) {
    list.outerHTML = '<p class="empty">Nothing here any more.</p>';
  }
  await kilnRefreshUnread();
  const all = document.querySelector('form[data-action="read-all"] button');
  const badge = document.querySelector("[data-unread-count]");
  if (all && badge) all.disabled = badge.hidden;
}

document.addEventListener("DOMContentLoaded", () => {
  kilnWhileVisible(kilnRefreshUnread, KILN_UNREAD_EVERY_MS);
  document.addEventListener("kiln:build-ended", () => kilnRefreshUnread());
  if (document.querySelector(KILN_LIVE_REGIONS)) kilnWhileVisible(kilnRefreshLive, KILN_LIVE_EVERY_MS);
  if (document.querySelector("time[data-ago]")) {
    kilnRefreshAges();
    kilnWhileVisible(kilnRefreshAges, 1000);
  }

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      return;
    }
    if (form.dataset.api) {
      event.preventDefault();
      const buttons = form.querySelectorAll("button");
      buttons.forEach((b) => { b.disabled = true; });
      kilnInboxAction(form).catch(() => {
        // Let the server answer the plain form (and show any refusal as a page).
        HTMLFormElement.prototype.submit.call(form);
      });
    }
  });

  document.querySelectorAll("button[data-copy]").forEach((button) => {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      const status = button.parentElement.querySelector("[data-copy-status]");
      if (!field) return;
      try {
        await navigator.clipboard.writeText(field.value);
        if (status) status.textContent = "Copied.";
      } catch (_) {
        field.focus();
        field.select();
        if (status) status.textContent = "Press Ctrl+C (or ⌘C) to copy.";
      }
    });
  });
});
