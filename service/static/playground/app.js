// The playground: every call goes through the public HTTP API, exactly as a client's would.
"use strict";

const $ = (id) => document.getElementById(id);
const SKIPPED = new Set(["images", "variant", "prompts", "visualize"]);
const POLL_MS = 500;
const state = { openapi: null, statuses: [], image: null };

class ApiError extends Error {}

function headers() {
  const result = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) result["X-API-Key"] = key;
  return result;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (!response.ok) {
    const detail = data && data.detail !== undefined ? data.detail : text || response.statusText;
    const message = typeof detail === "string" ? detail : JSON.stringify(detail, null, 2);
    throw new ApiError(`${response.status}: ${message}`);
  }
  return data;
}

// The request body schema of POST /inference/<type>: $refs resolved, allOf members merged.
function resolve(schema) {
  if (!schema) return { properties: {} };
  if (schema.$ref) return resolve(state.openapi.components.schemas[schema.$ref.split("/").pop()]);
  if (!schema.allOf) return schema;
  const properties = { ...(schema.properties || {}) };
  for (const member of schema.allOf) Object.assign(properties, resolve(member).properties || {});
  return { ...schema, properties };
}

function requestSchema(modelType) {
  const operation = state.openapi.paths[`/inference/${modelType}`];
  if (!operation) return { properties: {} };
  return resolve(operation.post.requestBody.content["application/json"].schema);
}

// The one non-null member of a nullable property ({oneOf: [{type: number}, {type: null}]}).
function concrete(property) {
  const members = property.oneOf || property.anyOf;
  if (!members) return property;
  return members.find((m) => m.type !== "null") || property;
}

function buildOptions() {
  const schema = requestSchema($("model").value);
  const properties = schema.properties || {};
  $("prompts-field").hidden = !("prompts" in properties);
  const box = $("options");
  box.replaceChildren();
  for (const [name, raw] of Object.entries(properties)) {
    if (SKIPPED.has(name)) continue;
    const property = concrete(raw);
    const label = document.createElement("label");
    label.textContent = name;
    label.title = raw.description || property.description || "";
    let input;
    if (property.enum || property.type === "boolean") {
      input = document.createElement("select");
      const values = property.enum || [true, false];
      for (const value of ["", ...values]) {
        const option = document.createElement("option");
        option.value = value === "" ? "" : JSON.stringify(value);
        option.textContent = value === "" ? `(default${raw.default !== undefined ? `: ${raw.default}` : ""})` : String(value);
        input.append(option);
      }
    } else if (property.type === "number" || property.type === "integer") {
      input = document.createElement("input");
      input.type = "number";
      input.step = property.type === "integer" ? "1" : "any";
      if (property.minimum !== undefined) input.min = property.minimum;
      if (property.maximum !== undefined) input.max = property.maximum;
      if (raw.default !== undefined && raw.default !== null) input.placeholder = `default ${raw.default}`;
      input.dataset.numeric = "true";
    } else {
      continue; // lists and objects are for the API docs, not this form
    }
    input.name = name;
    input.dataset.option = name;
    label.append(input);
    box.append(label);
  }
}

function buildVariants() {
  const modelType = $("model").value;
  const select = $("variant");
  select.replaceChildren();
  for (const status of state.statuses.filter((s) => s.model_type === modelType)) {
    const option = document.createElement("option");
    option.value = status.variant;
    option.textContent = status.default ? `${status.variant} (default)` : status.variant;
    option.selected = status.default;
    select.append(option);
  }
}

function requestBody() {
  if (!state.image) throw new ApiError("Choose an image first.");
  const body = { images: [state.image], visualize: true };
  if ($("variant").value) body.variant = $("variant").value;
  if (!$("prompts-field").hidden) {
    body.prompts = $("prompts").value.split(",").map((p) => p.trim()).filter(Boolean);
  }
  for (const input of document.querySelectorAll("[data-option]")) {
    if (input.value === "") continue;
    body[input.dataset.option] = input.dataset.numeric ? Number(input.value) : JSON.parse(input.value);
  }
  if (!("visualize" in (requestSchema($("model").value).properties || {}))) delete body.visualize;
  return body;
}

// Long strings (base64 PNGs) and long arrays (dense masks, features) are shortened in the JSON
// shown; it stays valid JSON, and the images are drawn above it.
function shorten(key, value) {
  if (typeof value === "string" && value.length > 200) {
    return `${value.slice(0, 60)}… (${value.length} characters)`;
  }
  if (Array.isArray(value) && value.length > 32) {
    return [...value.slice(0, 8), `… (${value.length} items)`];
  }
  return value;
}

function shown(value) {
  return JSON.stringify(value, shorten, 2);
}

function showResult(result) {
  const box = $("visualizations");
  box.replaceChildren();
  for (const [index, item] of (result.results || []).entries()) {
    if (!item || !item.visualization) continue;
    const image = document.createElement("img");
    image.src = `data:image/png;base64,${item.visualization}`;
    image.alt = `visualization of image ${index}`;
    image.className = "visualization";
    box.append(image);
  }
  $("json").textContent = shown(result);
  $("json").dataset.state = "result";
}

function busy(text) {
  const started = performance.now();
  $("progress-box").hidden = false;
  $("error").hidden = true;
  $("json").textContent = "";
  $("json").dataset.state = "running";
  $("visualizations").replaceChildren();
  for (const button of document.querySelectorAll("button")) button.disabled = true;
  const tick = () => {
    $("progress-text").textContent = `${text()} ${((performance.now() - started) / 1000).toFixed(1)} s`;
  };
  tick();
  const timer = setInterval(tick, 100);
  return () => {
    clearInterval(timer);
    $("progress-box").hidden = true;
    for (const button of document.querySelectorAll("button")) button.disabled = false;
  };
}

function fail(error) {
  $("error").textContent = error instanceof ApiError ? error.message : `Request failed: ${error}`;
  $("error").hidden = false;
  $("json").dataset.state = "error";
}

async function run(event) {
  event.preventDefault();
  const done = busy(() => "Running…");
  try {
    showResult(await api("POST", `/inference/${$("model").value}`, requestBody()));
  } catch (error) {
    fail(error);
  } finally {
    done();
  }
}

async function submitJob() {
  let status = "submitting";
  const done = busy(() => `Job ${status}…`);
  try {
    const submitted = await api("POST", `/jobs/submit/${$("model").value}`, requestBody());
    status = `${submitted.job_id} ${submitted.status}`;
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      const job = await api("GET", `/jobs/${submitted.job_id}`);
      status = `${job.job_id} ${job.status}`;
      if (job.status === "completed") {
        showResult(job.result);
        break;
      }
      if (job.status === "failed") throw new ApiError(`Job ${job.job_id} failed: ${job.error}`);
    }
  } catch (error) {
    fail(error);
  } finally {
    done();
  }
}

function readImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.image = String(reader.result).split(",", 2)[1];
    $("preview").src = reader.result;
    $("preview").hidden = false;
  };
  reader.onerror = () => fail(new ApiError(`Cannot read ${file.name}.`));
  reader.readAsDataURL(file);
}

async function start() {
  $("auth-fields").hidden = document.body.dataset.auth !== "required";
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    readImage(e.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (e) => readImage(e.target.files[0]));
  $("form").addEventListener("submit", run);
  $("submit-job").addEventListener("click", submitJob);
  $("model").addEventListener("change", () => {
    buildVariants();
    buildOptions();
  });
  $("api-key").addEventListener("change", load);
  await load();
}

async function load() {
  try {
    const [root, openapi, statuses] = await Promise.all([
      api("GET", "/"),
      api("GET", "/schema/openapi.json"),
      api("GET", "/models/status"),
    ]);
    state.openapi = openapi;
    state.statuses = statuses.models;
    const select = $("model");
    const previous = select.value;
    select.replaceChildren();
    for (const name of root.models) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      select.append(option);
    }
    if (root.models.includes(previous)) select.value = previous;
    buildVariants();
    buildOptions();
    $("error").hidden = true;
    document.body.dataset.ready = "true";
  } catch (error) {
    fail(error);
  }
}

start();
