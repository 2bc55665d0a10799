// The HQ console: polls the fleet, lists enrollments and products. No external assets, no frameworks.
// Everything shown came from kiosks or clerks: it is written with textContent only, never as HTML.
"use strict";

const FLEET_MS = 5000;
let csrf = "";

function el(tag, textValue, className) {
  const node = document.createElement(tag);
  if (textValue !== undefined && textValue !== null) node.textContent = String(textValue);
  if (className) node.className = className;
  return node;
}

function notice(message) {
  document.getElementById("notice").textContent = message;
}

async function api(path, options) {
  const init = Object.assign({cache: "no-store", credentials: "same-origin"}, options || {});
  if (init.method && init.method !== "GET") {
    init.headers = {"Content-Type": "application/json", "X-CSRF-Token": csrf};
  }
  const response = await fetch(path, init);
  let body = {};
  try { body = await response.json(); } catch (err) { body = {}; }
  if (!response.ok) {
    const error = new Error(typeof body.error === "string" ? body.error : "request failed (" + response.status + ")");
    error.status = response.status;
    throw error;
  }
  return body;
}

function ago(seconds) {
  if (typeof seconds !== "number") return "never";
  if (seconds < 120) return Math.round(seconds) + " s ago";
  if (seconds < 7200) return Math.round(seconds / 60) + " min ago";
  return Math.round(seconds / 3600) + " h ago";
}

function price(value) {
  return typeof value === "number" ? value.toFixed(2) : "";
}

async function loadFleet() {
  const fleet = await api("/api/fleet");
  document.getElementById("master").textContent = "master catalog v" + fleet.master_version;
  const body = document.querySelector("#fleet tbody");
  body.replaceChildren();
  for (const k of fleet.kiosks) {
    const row = el("tr", null, k.state === "offline" ? "offline" : "");
    row.dataset.kiosk = k.kiosk_id;
    row.append(
      el("td", k.kiosk_id),
      el("td", k.state),
      el("td", k.catalog_version === null ? "" : "v" + k.catalog_version),
      el("td", k.behind === null ? "" : k.behind),
      el("td", (k.model || "").slice(0, 12)),
      el("td", k.last_error || "", k.last_error ? "error" : ""),
      el("td", ago(k.seen_s_ago)),
    );
    body.append(row);
  }
  document.getElementById("fleet-empty").classList.toggle("hidden", fleet.kiosks.length > 0);
  const problems = document.getElementById("fleet-problems");
  problems.replaceChildren(...fleet.problems.map((p) => el("li", "unreadable status: " + p)));
}

// What a decided entry says instead of the approve form: a withdrawn one cannot be approved.
const STATE_TEXT = {
  approved: "Approved",
  rejected: "Rejected",
  withdrawn: "Withdrawn by its kiosk (the clerk undid the teach): it cannot be approved",
};
const EMPTY_TEXT = {
  pending: "Nothing waits for approval.",
  withdrawn: "No enrollment was withdrawn.",
  approved: "No enrollment was approved yet.",
  rejected: "No enrollment was rejected.",
  all: "The inbox is empty.",
};

function enrollmentCard(entry) {
  const card = document.getElementById("enrollment-template").content.firstElementChild.cloneNode(true);
  card.dataset.id = String(entry.id);
  card.dataset.status = entry.status;
  card.querySelector(".title").textContent = entry.name + " (" + entry.product_id + ")";
  const received = new Date(entry.received * 1000).toLocaleString();
  card.querySelector(".meta").textContent =
    "#" + entry.id + " from " + entry.kiosk_id + " · " + entry.frames + " frames · " + received +
    (entry.category ? " · " + entry.category : "") + (entry.note ? " · " + entry.note : "");
  const photos = card.querySelector(".photos");
  for (let i = 0; i < entry.photos; i++) {
    const img = el("img");
    img.alt = "photo " + (i + 1) + " of " + entry.name;
    img.src = "/api/enrollments/" + encodeURIComponent(entry.id) + "/photos/" + i;
    photos.append(img);
  }
  const form = card.querySelector("form");
  if (entry.status !== "pending") {
    // Decided (or withdrawn by its kiosk): no form, so nothing to approve or reject; the photos stay.
    card.classList.add("decided");
    const state = card.querySelector(".state");
    state.textContent = STATE_TEXT[entry.status] || entry.status;
    state.classList.remove("hidden");
    form.remove();
    return card;
  }
  form.elements.price.value = price(entry.price);
  form.elements.description.value = entry.description || "";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = {price: form.elements.price.value.trim(), description: form.elements.description.value.trim()};
    await decide(entry, "approve", body);
  });
  card.querySelector(".reject").addEventListener("click", async () => {
    await decide(entry, "reject", {note: form.elements.note.value.trim()});
  });
  return card;
}

async function decide(entry, action, body) {
  try {
    const result = await api("/api/enrollments/" + encodeURIComponent(entry.id) + "/" + action, {
      method: "POST", body: JSON.stringify(body),
    });
    notice("#" + entry.id + " " + result.status + (result.master_version ? ", master now v" + result.master_version : ""));
  } catch (err) {
    notice("#" + entry.id + ": " + err.message);
  }
  await Promise.all([loadEnrollments(), loadProducts(), refreshFleet()]);
}

async function loadEnrollments() {
  const status = document.getElementById("enrollment-status").value;
  const data = await api("/api/enrollments?status=" + encodeURIComponent(status));
  const list = document.getElementById("enrollments");
  list.replaceChildren(...data.enrollments.map(enrollmentCard));
  const empty = document.getElementById("enrollments-empty");
  empty.classList.toggle("hidden", data.enrollments.length > 0 && data.enrollments.length === data.total);
  empty.textContent = data.enrollments.length ? "the oldest " + data.enrollments.length + " of " + data.total + " are shown" : EMPTY_TEXT[status];
}

async function loadProducts() {
  const query = document.getElementById("query").value.trim();
  const data = await api("/api/products?q=" + encodeURIComponent(query));
  const body = document.querySelector("#products tbody");
  body.replaceChildren();
  for (const p of data.products) {
    const row = el("tr");
    row.dataset.product = p.id;
    const cell = el("td");
    const img = el("img", null, "thumb");
    img.alt = "";
    img.onerror = () => { img.remove(); };
    img.src = "/api/products/" + encodeURIComponent(p.id) + "/thumbnail";
    cell.append(img);
    row.append(cell, el("td", p.id), el("td", p.name), el("td", p.category), el("td", price(p.price)),
      el("td", p.description), el("td", p.references));
    body.append(row);
  }
  document.getElementById("products-count").textContent =
    data.products.length < data.total ? "first " + data.products.length + " of " + data.total : data.total + " products";
}

async function refreshFleet() {
  try {
    await loadFleet();
  } catch (err) {
    notice("fleet: " + err.message);
  }
}

async function start() {
  await Promise.all([refreshFleet(), loadEnrollments(), loadProducts()]);
  document.body.dataset.ready = "true";
  setInterval(refreshFleet, FLEET_MS);
}

async function main() {
  const session = await api("/api/session");
  csrf = session.csrf;
  const login = document.getElementById("login");
  document.getElementById("enrollment-status").addEventListener("change", () => {
    loadEnrollments().catch((err) => notice("enrollments: " + err.message));
  });
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    loadProducts().catch((err) => notice("products: " + err.message));
  });
  if (session.login_required && !session.logged_in) {
    login.classList.remove("hidden");
    login.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api("/api/login", {method: "POST", body: JSON.stringify({credential: document.getElementById("credential").value})});
        login.classList.add("hidden");
        document.getElementById("console").classList.remove("hidden");
        await start();
      } catch (err) {
        notice(err.message);
      }
    });
    return;
  }
  document.getElementById("console").classList.remove("hidden");
  await start();
}

main().catch((err) => notice(err.message));
