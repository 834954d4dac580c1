// The operator dashboard: a small page over the Director's REST API (the same calls, the
// same authorization as the `director` command). The operator's API token is kept in this
// tab's sessionStorage only. Every value from the server is put in the page as text
// (textContent), never as markup, and the server's Content-Security-Policy allows scripts
// and styles from /ui only.
"use strict";

const TOKEN_KEY = "director-token";
const main = () => document.getElementById("main");
let refresher = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function showError(message) {
  const box = document.getElementById("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(method, path, body) {
  const headers = { Authorization: "Bearer " + token() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    location.hash = "#/login";
    throw new Error("the token was refused: log in again");
  }
  if (!response.ok) {
    throw new Error((json && json.error) || response.status + " " + response.statusText);
  }
  return json;
}

function table(headers, rows) {
  return el(
    "table",
    {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c)))))),
  );
}

function num(value) {
  return el("td", { class: "num" }, value);
}

function stateBadge(state) {
  return el("span", { class: "state " + state, "data-state": state }, state);
}

function card(label, value, testid) {
  return el("div", { class: "card", "data-testid": testid }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
}

function progressBar(wave) {
  const total = Math.max(wave.vehicles, 1);
  const bar = el("div", {
    class: "bar",
    role: "img",
    "aria-label": `${wave.installed} installed, ${wave.failed} failed, ${wave.installing} installing, ${wave.waiting} waiting of ${wave.vehicles}`,
    "data-installed": wave.installed,
    "data-failed": wave.failed,
    "data-vehicles": wave.vehicles,
  });
  for (const part of ["installed", "failed", "installing", "skipped", "cancelled"]) {
    const span = el("span", { class: part, title: `${wave[part]} ${part}` });
    span.style.width = (100 * wave[part]) / total + "%";
    bar.append(span);
  }
  return bar;
}

// ---- pages ---------------------------------------------------------------------------

function loginPage() {
  const input = el("input", { type: "password", id: "token", autocomplete: "off", placeholder: "dat_…", size: 50 });
  const form = el(
    "form",
    { class: "stack login", id: "login-form" },
    el("label", { for: "token" }, "Operator API token"),
    input,
    el("div", { class: "hint" }, "Made on the Director's host with `director token create`. Kept in this tab only."),
    el("span"),
    el("button", { class: "primary", type: "submit" }, "Log in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    try {
      await api("GET", "/api/v1/status");
      showError("");
      location.hash = "#/overview";
    } catch (e) {
      sessionStorage.removeItem(TOKEN_KEY);
      showError("Log in refused: " + e.message);
    }
  });
  return [el("h1", {}, "Log in"), form];
}

async function overviewPage() {
  const o = await api("GET", "/api/v1/overview");
  const rate = o.success_rate === null ? "–" : (100 * o.success_rate).toFixed(1) + "%";
  return [
    el("h1", {}, "Fleet overview"),
    el(
      "div",
      { class: "cards" },
      card("vehicles", o.vehicles, "vehicles"),
      card("ECUs", o.ecus, "ecus"),
      card("update success rate", rate, "success-rate"),
      card("security events, 24 h", o.security_events_24h, "security-24h"),
      card("campaigns running", o.campaigns.running || 0, "campaigns-running"),
      card("campaigns paused", o.campaigns.paused || 0, "campaigns-paused"),
    ),
    el("h2", {}, "Images in use"),
    table(["image", "ECUs"], o.images.map((i) => [el("span", { class: "mono" }, i.filename), num(i.ecus)])),
    el("h2", {}, "Assignment entries"),
    table(["status", "entries"], Object.entries(o.assignments).map(([s, n]) => [s, num(n)])),
  ];
}

async function vehiclesPage(params) {
  const search = params.get("search") || "";
  const before = params.get("before");
  let path = "/api/v1/vehicles?limit=50";
  if (search) path += "&search=" + encodeURIComponent(search);
  if (before) path += "&before=" + encodeURIComponent(before);
  const rows = await api("GET", path);
  const input = el("input", { type: "search", id: "vehicle-search", value: search, placeholder: "part of a VIN" });
  const form = el("form", { class: "inline" }, input, el("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = "#/vehicles?search=" + encodeURIComponent(input.value.trim());
  });
  const out = [
    el("h1", {}, "Vehicles"),
    form,
    table(
      ["VIN", "registered"],
      rows.map((v) => [el("a", { href: "#/vehicle/" + encodeURIComponent(v.vin), class: "mono" }, v.vin), v.registered_at]),
    ),
  ];
  if (rows.length === 50) {
    const next = "#/vehicles?search=" + encodeURIComponent(search) + "&before=" + rows[rows.length - 1].cursor;
    out.push(el("p", {}, el("a", { href: next }, "Older vehicles →")));
  }
  return out;
}

async function vehiclePage(vin) {
  const [v, events] = await Promise.all([
    api("GET", "/api/v1/vehicles/" + encodeURIComponent(vin)),
    api("GET", "/api/v1/events?limit=50&vin=" + encodeURIComponent(vin)),
  ]);
  return [
    el("h1", {}, "Vehicle ", el("span", { class: "mono" }, v.vin)),
    el("p", { class: "muted" }, `registered ${v.created_at}; last manifest ${v.last_manifest_at || "never"}`),
    el("h2", {}, "Attributes"),
    table(["name", "value"], Object.entries(v.attributes).map(([k, val]) => [k, val])),
    el("h2", {}, "ECUs"),
    table(
      ["serial", "hardware", "role", "installed image", "release", "last report"],
      v.ecus.map((e) => [
        el("span", { class: "mono" }, e.serial),
        e.hardware_id,
        e.primary ? "primary" : "secondary",
        e.installed ? el("span", { class: "mono" }, e.installed.filename) : "–",
        num(e.installed ? e.installed.release_counter : "–"),
        e.last_report_at || "–",
      ]),
    ),
    el("h2", {}, "Assignments"),
    table(
      ["correlation", "ECU", "image", "status", "detail", "updated"],
      v.assignments.map((a) => [el("span", { class: "mono" }, a.correlation_id), a.ecu_serial, a.filename, a.status, a.detail, a.updated_at]),
    ),
    el("h2", {}, "Events"),
    eventsTable(events),
  ];
}

function eventsTable(events) {
  return table(
    ["time", "kind", "severity", "vehicle", "ECU", "actor", "detail"],
    events.map((e) => [
      e.at,
      el("span", { class: e.severity === "security" ? "security" : "" }, e.kind),
      e.severity,
      e.vin || "–",
      e.ecu_serial || "–",
      e.actor,
      e.detail,
    ]),
  );
}

async function eventsPage(params) {
  const security = params.get("security") !== "false";
  const vin = params.get("vin") || "";
  const kind = params.get("kind") || "";
  const since = params.get("since") || "";
  let path = "/api/v1/events?limit=200&security=" + security;
  if (vin) path += "&vin=" + encodeURIComponent(vin);
  if (kind) path += "&kind=" + encodeURIComponent(kind);
  if (since) path += "&since=" + encodeURIComponent(since);
  const events = await api("GET", path);
  const fields = {
    security: el("input", { type: "checkbox", id: "f-security", checked: security }),
    vin: el("input", { id: "f-vin", value: vin, placeholder: "VIN" }),
    kind: el("input", { id: "f-kind", value: kind, placeholder: "kind, e.g. attack_reported" }),
    since: el("input", { id: "f-since", value: since, placeholder: "since 2026-12-01T00:00:00Z" }),
  };
  const form = el(
    "form",
    { class: "inline" },
    el("label", {}, fields.security, " security only"),
    fields.vin,
    fields.kind,
    fields.since,
    el("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    q.set("security", fields.security.checked);
    for (const key of ["vin", "kind", "since"]) if (fields[key].value.trim()) q.set(key, fields[key].value.trim());
    location.hash = "#/events?" + q.toString();
  });
  return [el("h1", {}, security ? "Security events" : "Events"), form, eventsTable(events)];
}

async function campaignsPage() {
  const [campaigns, groups] = await Promise.all([api("GET", "/api/v1/campaigns"), api("GET", "/api/v1/groups")]);
  const rows = campaigns.map((c) => {
    const total = c.progress.reduce(
      (sum, w) => ({
        vehicles: sum.vehicles + w.vehicles,
        installed: sum.installed + w.installed,
        failed: sum.failed + w.failed,
        installing: sum.installing + w.installing,
        waiting: sum.waiting + w.waiting,
        skipped: sum.skipped + w.skipped,
        cancelled: sum.cancelled + w.cancelled,
      }),
      // Members no wave has picked yet are part of the whole: the bar is of the group.
      { vehicles: c.not_picked, installed: 0, failed: 0, installing: 0, waiting: c.not_picked, skipped: 0, cancelled: 0 },
    );
    return [
      el("a", { href: "#/campaign/" + encodeURIComponent(c.name) }, c.name),
      stateBadge(c.state),
      `${c.current_wave}/${c.waves.length}`,
      c.group,
      c.images.join(", "),
      progressBar(total),
      num(total.installed),
      num(total.failed),
    ];
  });
  return [
    el("h1", {}, "Campaigns"),
    table(["campaign", "state", "wave", "group", "images", "progress", "installed", "failed"], rows),
    el("h2", {}, "New campaign"),
    newCampaignForm(groups),
  ];
}

function newCampaignForm(groups) {
  const f = {
    name: el("input", { id: "c-name", required: true, placeholder: "brake-3" }),
    images: el("input", { id: "c-images", required: true, placeholder: "brake-3.bin" }),
    group: el("select", { id: "c-group", required: true }, groups.map((g) => el("option", { value: g.name }, `${g.name} (${g.kind}, ${g.members} members)`))),
    waves: el("input", { id: "c-waves", value: "1%,10%,50%,100%" }),
    ratio: el("input", { id: "c-ratio", value: "5%" }),
    soak: el("input", { id: "c-soak", type: "number", min: 0, value: 0 }),
    windows: el("textarea", { id: "c-windows", rows: 2, placeholder: "mon-fri 01:00-05:00" }),
    joinLater: el("input", { id: "c-join-later", type: "checkbox" }),
    start: el("input", { id: "c-start", type: "checkbox", checked: true }),
  };
  const form = el(
    "form",
    { class: "stack", id: "new-campaign" },
    el("label", { for: "c-name" }, "Name"), f.name,
    el("label", { for: "c-images" }, "Images"), f.images,
    el("div", { class: "hint" }, "Comma-separated; each goes to the ECUs of the hardware ids it is for."),
    el("label", { for: "c-group" }, "Group"), f.group,
    el("label", { for: "c-waves" }, "Waves"), f.waves,
    el("div", { class: "hint" }, "Cumulative shares, or group:NAME."),
    el("label", { for: "c-ratio" }, "Pause above failed share"), f.ratio,
    el("label", { for: "c-soak" }, "Soak between waves (s)"), f.soak,
    el("label", { for: "c-windows" }, "Maintenance windows"), f.windows,
    el("div", { class: "hint" }, "One per line, in each vehicle's time zone; empty: any time."),
    el("label", { for: "c-join-later" }, "Later members join"), f.joinLater,
    el("label", { for: "c-start" }, "Start now"), f.start,
    el("span"),
    el("button", { class: "primary", type: "submit", id: "c-create" }, "Create campaign"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const split = (text, sep) => text.split(sep).map((s) => s.trim()).filter(Boolean);
    const plan = {
      name: f.name.value.trim(),
      images: split(f.images.value, ","),
      group: f.group.value,
      waves: split(f.waves.value, ","),
      max_failure_ratio: f.ratio.value.trim(),
      soak_secs: Number(f.soak.value || 0),
      windows: split(f.windows.value, "\n"),
      join_later: f.joinLater.checked,
    };
    try {
      await api("POST", "/api/v1/campaigns", plan);
      if (f.start.checked) await api("POST", "/api/v1/campaigns/" + encodeURIComponent(plan.name) + "/start");
      showError("");
      location.hash = "#/campaign/" + encodeURIComponent(plan.name);
    } catch (e) {
      showError("The campaign was refused: " + e.message);
    }
  });
  return form;
}

async function campaignPage(name) {
  const c = await api("GET", "/api/v1/campaigns/" + encodeURIComponent(name));
  const act = (action, label, cls, enabled) => {
    const button = el("button", { type: "button", class: cls, id: "action-" + action, disabled: !enabled }, label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await api("POST", "/api/v1/campaigns/" + encodeURIComponent(name) + "/" + action, { reason: `${action} from the dashboard` });
        showError("");
      } catch (e) {
        showError(`${label} refused: ${e.message}`);
      }
      route();
    });
    return button;
  };
  const s = c.state;
  return [
    el("h1", {}, "Campaign ", c.name, " ", stateBadge(s)),
    c.reason ? el("p", { id: "campaign-reason" }, "Reason: ", c.reason) : null,
    el(
      "p",
      { class: "muted" },
      `images ${c.images.join(", ")} · group ${c.group} · waves ${c.waves.join(", ")} · pause above ${c.max_failure_ratio} failed · soak ${c.soak_secs} s · windows ${c.windows.length ? c.windows.join("; ") : "any time"}${c.join_later ? " · later members join" : ""}`,
    ),
    el(
      "div",
      { class: "actions" },
      act("start", "Start", "primary", s === "draft"),
      act("pause", "Pause", "", s === "running"),
      act("resume", "Resume", "primary", s === "paused"),
      act("retry-failed", "Retry failed", "", ["running", "paused", "completed"].includes(s)),
      act("abort", "Abort", "danger", ["draft", "running", "paused"].includes(s)),
    ),
    table(
      ["wave", "plan", "progress", "vehicles", "waiting", "installing", "installed", "failed", "skipped", "cancelled"],
      c.progress.map((w) => [
        el("span", { "data-wave": w.wave }, w.wave === c.current_wave ? `${w.wave} (current)` : w.wave),
        w.plan,
        progressBar(w),
        num(w.vehicles),
        num(w.waiting),
        num(w.installing),
        num(w.installed),
        num(w.failed),
        num(w.skipped),
        num(w.cancelled),
      ]),
    ),
    c.not_picked ? el("p", { class: "muted" }, `${c.not_picked} members not yet picked by a wave`) : null,
    el("p", { class: "muted" }, `updated ${c.updated_at} · refreshes every 2 s`),
  ];
}

// ---- routing -------------------------------------------------------------------------

const pages = [
  [/^#\/overview$/, () => overviewPage(), "overview"],
  [/^#\/vehicles(\?.*)?$/, (m) => vehiclesPage(new URLSearchParams((m[1] || "").slice(1))), "vehicles"],
  [/^#\/vehicle\/(.+)$/, (m) => vehiclePage(decodeURIComponent(m[1])), "vehicles"],
  [/^#\/campaigns$/, () => campaignsPage(), "campaigns"],
  [/^#\/campaign\/(.+)$/, (m) => campaignPage(decodeURIComponent(m[1])), "campaigns", true],
  [/^#\/events(\?.*)?$/, (m) => eventsPage(new URLSearchParams((m[1] || "").slice(1))), "events"],
];

async function route() {
  clearTimeout(refresher);
  const hash = location.hash || "#/overview";
  const loggedIn = !!token();
  document.getElementById("nav").hidden = !loggedIn;
  if (!loggedIn || hash === "#/login") {
    main().replaceChildren(...loginPage());
    return;
  }
  const found = pages.find(([pattern]) => pattern.test(hash));
  if (!found) {
    location.hash = "#/overview";
    return;
  }
  const [pattern, render, section, live] = found;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.dataset.page === section);
  try {
    const content = await render(hash.match(pattern));
    if ((location.hash || "#/overview") !== hash) return; // the operator moved on meanwhile
    main().replaceChildren(...content.filter(Boolean));
    main().dataset.page = section;
    main().dataset.loaded = String(Date.now());
  } catch (e) {
    showError(e.message);
  }
  if (live) refresher = setTimeout(route, 2000);
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    location.hash = "#/login";
    route();
  });
  route();
});
