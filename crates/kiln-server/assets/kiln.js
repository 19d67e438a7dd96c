// Kiln dashboard: makes server-rendered pages live. Pages work without it.
"use strict";

/** The session's CSRF token, for calls to the JSON API. */
function kilnCsrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/** Calls the JSON API as the signed-in user; resolves to the parsed body or throws an Error with the API's message. */
async function kilnApi(method, path, body) {
  const init = { method, headers: { "X-CSRF-Token": kilnCsrf() }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    throw new Error((data && data.error && data.error.message) || response.statusText);
  }
  return data;
}

/** "3 s", "5 min", "2 h", "4 d". */
function kilnSpan(s) {
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
}

/** A timestamp as "3 s ago" / "5 min ago", or "in 2 h" more than a minute ahead (as web/when.rs). */
function kilnAgo(ms) {
  const ahead = ms - Date.now();
  if (ahead > 60000) return "in " + kilnSpan(Math.round(ahead / 1000));
  return kilnSpan(Math.max(0, Math.round((Date.now() - ms) / 1000))) + " ago";
}

/** `2027-01-15 08:00:04 UTC`, the tooltip of every time (as web/when.rs). */
function kilnExact(ms) {
  const iso = new Date(ms).toISOString();
  return iso.slice(0, 10) + " " + iso.slice(11, 19) + " UTC";
}

/** A <time> element as the server renders it: the words, the exact time as its title. */
function kilnTime(iso) {
  const el = document.createElement("time");
  const at = Date.parse(iso);
  el.setAttribute("datetime", iso);
  if (!Number.isNaN(at)) {
    el.title = kilnExact(at);
    el.dataset.ago = "";
    el.textContent = kilnAgo(at);
  }
  return el;
}
