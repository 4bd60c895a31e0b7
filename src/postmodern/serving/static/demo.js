// The demo shop: products from /demo/catalog, recommendations from /invocations after every click, the
// baselines from /demo/compare, and every click sent to the collector (POST /events) when there is one.
"use strict";

const K = 10;
const SHOWN = 48; // products drawn at once: a search or a category narrows the rest
const state = {
  products: [],
  session: [], // [{sku, action}]
  sessionId: newSessionId(),
  collector: "",
  recorded: 0,
  lastTimestamp: 0,
  sending: Promise.resolve(),
  apiKeyRequired: false,
};

function newSessionId() {
  return "demo-" + crypto.randomUUID();
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "onclick") node.addEventListener("click", value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function headers() {
  const result = { "Content-Type": "application/json" };
  if (state.apiKeyRequired) result["X-API-Key"] = document.getElementById("api-key").value;
  return result;
}

function productOf(sku) {
  return state.products.find((product) => product.sku === sku);
}

function describe(product) {
  if (!product || (product.category == null && product.price_bucket == null)) return "";
  const parts = [];
  if (product.category != null) parts.push("category " + product.category);
  if (product.price_bucket != null) parts.push("price bucket " + product.price_bucket);
  return parts.join(" · ");
}

function setRecording(text, ok) {
  const notice = document.getElementById("recording");
  notice.textContent = text;
  notice.classList.toggle("ok", ok);
}

function renderProducts() {
  const query = document.getElementById("search").value.trim().toLowerCase();
  const category = document.getElementById("category").value;
  const matching = state.products.filter(
    (product) =>
      (!category || String(product.category) === category) &&
      (!query || product.sku.toLowerCase().includes(query) || String(product.category ?? "").toLowerCase().includes(query)),
  );
  const shown = matching.slice(0, SHOWN);
  const groups = new Map();
  for (const product of shown) {
    const name = product.category == null ? "Uncategorised" : "Category " + product.category;
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push(product);
  }
  const container = document.getElementById("products");
  container.replaceChildren();
  for (const [name, products] of groups) {
    products.sort((a, b) => (a.price_bucket ?? 0) - (b.price_bucket ?? 0) || a.sku.localeCompare(b.sku));
    const grid = el("div", { class: "grid" });
    for (const product of products) {
      grid.append(
        el(
          "article",
          { class: "product", "data-sku": product.sku },
          el("button", { type: "button", class: "view", "aria-label": "View " + product.sku, onclick: () => click(product.sku, "detail") }, product.sku),
          el("span", { class: "facts" }, describe(product) || "\u00a0"),
          el(
            "div",
            { class: "actions" },
            el("button", { type: "button", class: "add", "aria-label": "Add " + product.sku + " to cart", onclick: () => click(product.sku, "add") }, "Add to cart"),
            el("button", { type: "button", class: "secondary buy", "aria-label": "Buy " + product.sku, onclick: () => click(product.sku, "purchase") }, "Buy"),
          ),
        ),
      );
    }
    container.append(el("h3", {}, name), grid);
  }
  document.getElementById("shown").textContent =
    `${shown.length} of ${matching.length} products shown` + (matching.length > shown.length ? ": search to narrow them" : "");
}

function renderSession() {
  const list = document.getElementById("session");
  list.replaceChildren();
  if (!state.session.length) {
    list.append(el("li", { class: "empty" }, "Click a product to start a session."));
    return;
  }
  const words = { detail: "viewed", add: "added to cart", purchase: "bought" };
  for (const { sku, action } of state.session) {
    list.append(el("li", {}, sku + " ", el("span", { class: "action" }, words[action])));
  }
}

async function click(sku, action) {
  state.session.push({ sku, action });
  renderSession();
  record(sku, action);
  await recommend();
}

function record(sku, action) {
  if (!state.collector) return;
  const timestamp = Math.max(Date.now(), state.lastTimestamp + 1); // the log's order is the clicks' order
  state.lastTimestamp = timestamp;
  const event = {
    event_id: crypto.randomUUID(),
    session_id_hash: state.sessionId,
    event_type: "event_product",
    product_action: action,
    product_sku_hash: sku,
    server_timestamp_epoch_ms: timestamp,
    hashed_url: "demo",
  };
  // one request after the other: events reach the collector in the order they happened
  state.sending = state.sending.then(async () => {
    try {
      const response = await fetch(state.collector + "/events", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ events: [event] }),
      });
      const answer = await response.json();
      if (!response.ok || answer.accepted + answer.duplicates !== 1) throw new Error(answer.detail || "refused");
      state.recorded += 1;
      setRecording(`Clicks are recorded: ${state.recorded} event(s) of this session sent to the collector at ${state.collector}.`, true);
    } catch (error) {
      setRecording(`Events are not recorded: the collector at ${state.collector} did not take them (${error.message}).`, false);
    }
  });
}

async function recommend() {
  const answer = document.getElementById("answer");
  const list = document.getElementById("recommendations");
  const skus = state.session.map((click) => click.sku);
  const started = performance.now();
  let response;
  try {
    response = await fetch("/invocations", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({ sessions: [skus], k: K }),
    });
  } catch (error) {
    answer.textContent = "The server did not answer: " + error.message;
    return;
  }
  const latency = performance.now() - started;
  const body = await response.json();
  if (!response.ok) {
    answer.textContent = `The server refused (${response.status}): ${body.detail ?? ""}`;
    list.replaceChildren();
    return;
  }
  answer.dataset.version = body.model_version;
  answer.replaceChildren(
    `Model ${body.model_version} (${body.model_family}) answered in ${latency.toFixed(1)} ms.`,
    ...(body.fallback[0] ? [" ", el("span", { class: "fallback" }, "No product of this session is known to the model: these are the most popular.")] : []),
    ...(body.unknown_skus[0].length ? [" ", el("span", { class: "fallback" }, "Unknown to the model: " + body.unknown_skus[0].join(", ") + ".")] : []),
  );
  list.replaceChildren(
    ...body.recommendations[0].map(({ sku, score }) =>
      el(
        "li",
        { "data-sku": sku },
        el("button", { type: "button", "aria-label": "View " + sku, onclick: () => click(sku, "detail") }, sku),
        " ",
        el("span", { class: "score" }, (100 * score).toFixed(2) + "%"),
        describe(productOf(sku)) ? " · " + describe(productOf(sku)) : "",
      ),
    ),
  );
  if (!document.getElementById("comparison").hidden) await compare();
}

async function compare() {
  const section = document.getElementById("comparison");
  const grid = document.getElementById("compare-grid");
  section.hidden = false;
  const response = await fetch("/demo/compare", {
    method: "POST",
    headers: headers(),
    body: JSON.stringify({ session: state.session.map((click) => click.sku), k: K }),
  });
  const body = await response.json();
  if (!response.ok) {
    grid.replaceChildren(el("p", {}, `The server refused (${response.status}): ${JSON.stringify(body.detail)}`));
    return;
  }
  const served = new Set(body.rankings[0].recommendations.map((item) => item.sku));
  grid.replaceChildren(
    ...body.rankings.map((ranking) =>
      el(
        "div",
        { class: "ranking", "data-name": ranking.name },
        el("h3", {}, ranking.name + (ranking.fallback ? " (popular: nothing known)" : "")),
        el(
          "ol",
          {},
          ...ranking.recommendations.map(({ sku, score }) =>
            el("li", served.has(sku) ? { class: "shared" } : {}, sku + " ", el("span", { class: "score" }, (100 * score).toFixed(2) + "%")),
          ),
        ),
      ),
    ),
  );
}

async function start() {
  const response = await fetch("/demo/catalog");
  const catalog = await response.json();
  if (!response.ok) {
    document.getElementById("model").textContent = "No model is served yet: " + (catalog.detail ?? response.status);
    return;
  }
  state.products = catalog.products;
  state.collector = (catalog.collector_url || "").replace(/\/$/, "");
  state.apiKeyRequired = catalog.api_key_required;
  document.getElementById("key-box").hidden = !state.apiKeyRequired;
  document.getElementById("model").textContent = `model ${catalog.model_version} (${catalog.model_family}), ${state.products.length} products`;
  const categories = [...new Set(state.products.map((product) => product.category).filter((c) => c != null))].sort((a, b) => String(a).localeCompare(String(b), undefined, { numeric: true }));
  document.getElementById("category").append(...categories.map((category) => el("option", { value: String(category) }, "Category " + category)));
  document.getElementById("search").addEventListener("input", renderProducts);
  document.getElementById("category").addEventListener("change", renderProducts);
  document.getElementById("compare").addEventListener("click", compare);
  document.getElementById("reset").addEventListener("click", () => {
    state.session = [];
    state.sessionId = newSessionId();
    state.recorded = 0;
    renderSession();
    document.getElementById("recommendations").replaceChildren();
    document.getElementById("answer").textContent = "";
  });
  renderProducts();
  try {
    const ping = await fetch(state.collector + "/ping");
    if (!ping.ok) throw new Error("status " + ping.status);
    setRecording(`Clicks are recorded: each one is sent to the collector at ${state.collector}.`, true);
  } catch (error) {
    state.collector = "";
    setRecording("Events are not recorded: no collector answers at " + catalog.collector_url + " (run `postmodern collect`).", false);
  }
}

start();
