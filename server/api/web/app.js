// gpt2serve playground: completion and chat over the server's own OpenAI API, streamed (SSE).
// Plain JS, no build step, no external code: the page must work on an air-gapped machine.
'use strict';

const $ = (id) => document.getElementById(id);
const KEY_STORE = 'gpt2serve.apiKey';
// Fields the openai SDK takes as keyword arguments; the server's extra sampling controls go in
// `extra_body` (the SDK refuses unknown keyword arguments).
const SDK_FIELDS = {
  completion: ['prompt', 'max_tokens', 'temperature', 'top_p', 'n', 'stop', 'seed', 'logprobs',
    'presence_penalty', 'frequency_penalty', 'best_of', 'stream'],
  chat: ['messages', 'max_tokens', 'temperature', 'top_p', 'n', 'stop', 'seed', 'logprobs',
    'top_logprobs', 'presence_penalty', 'frequency_penalty', 'response_format', 'stream'],
};
// Beam search does not sample: the server refuses these with use_beam_search.
const SAMPLING_ONLY = ['temperature', 'top_p', 'top_k', 'min_p', 'logprobs'];
// What the format box's text holds, by output format (none and JSON object take no text).
const FORMAT_TEXT = { json_schema: 'JSON schema', regex: 'regex (the whole output matches it)',
  choice: 'choices, one per line' };
const state = { config: null, model: null, mode: 'completion', history: [], controller: null,
  runs: 0 };

// -- server access ----------------------------------------------------------------------------

function apiKey() { return sessionStorage.getItem(KEY_STORE) || ''; }

function headers() {
  const h = { 'Content-Type': 'application/json' };
  if (apiKey()) h.Authorization = `Bearer ${apiKey()}`;
  return h;
}

class ServerError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

const STATUS_TEXT = { 400: 'Bad request', 401: 'Unauthorized', 404: 'Not found',
  413: 'Request too large', 500: 'Server error', 503: 'Server unavailable' };

// An OpenAI error envelope ({"error": {"message", "param"}}) as one readable sentence.
async function errorOf(response) {
  let message = response.statusText || 'request failed';
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      if (body.error.param) message += ` (field: ${body.error.param})`;
    }
  } catch (_) { /* not JSON: keep the status text */ }
  if (response.status === 401) message += ' — enter the server\'s key in the API key field.';
  const retry = response.headers.get('Retry-After');
  if (response.status === 503 && retry) message += ` (retry in ${retry} s)`;
  return new ServerError(response.status, message);
}

function describe(err) {
  if (err instanceof ServerError) {
    return `${err.status} ${STATUS_TEXT[err.status] || 'Error'}: ${err.message}`;
  }
  return `Could not reach the server: ${err.message}`;
}

// An error sent as the stream's last event (the status line had already said 200).
function streamError(error) {
  const status = Number.isInteger(error.code) ? error.code
    : error.type === 'service_unavailable' ? 503 : 500;
  return new ServerError(status, error.message);
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// The `data:` payloads of a server-sent event stream, as they arrive.
async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let match;
    while ((match = /\r?\n\r?\n/.exec(buffer))) {
      const block = buffer.slice(0, match.index);
      buffer = buffer.slice(match.index + match[0].length);
      const lines = block.split(/\r?\n/).filter((l) => l.startsWith('data:'));
      if (lines.length) yield lines.map((l) => l.slice(5).replace(/^ /, '')).join('\n');
    }
  }
}

// -- parameters -------------------------------------------------------------------------------

function fmt(v) { return Math.abs(v) >= 1e6 ? v.toExponential(0) : String(v); }

function rangeText(p) {
  const low = `${p.min_exclusive ? '(' : '['}${fmt(p.min)}`;
  return `${low}, ${p.max === null ? '∞)' : `${fmt(p.max)}]`}`;
}

// One labelled number input per parameter, bounds and defaults as the server sent them.
function buildParams(params, box) {
  box.replaceChildren();
  for (const p of params) {
    const wrap = document.createElement('div');
    const label = document.createElement('label');
    const input = document.createElement('input');
    input.id = `p-${p.name}`;
    input.type = 'number';
    input.name = p.name;
    input.min = p.min;
    if (p.max !== null) input.max = p.max;
    input.step = p.type === 'integer' ? '1' : 'any';
    if (p.default !== null) input.value = p.default;
    else input.placeholder = p.name === 'best_of' ? 'n' : 'off'; // best_of: n beams
    label.htmlFor = input.id;
    label.append(`${p.name} `);
    const range = document.createElement('span');
    range.className = 'range';
    range.textContent = rangeText(p);
    label.append(range);
    wrap.append(label, input);
    box.append(wrap);
  }
}

function unescapeStop(line) {
  return line.replace(/\\([nt\\])/g, (_, c) => ({ n: '\n', t: '\t', '\\': '\\' }[c]));
}

// Only what differs from the server's defaults (so the copied request says what was chosen),
// max_tokens always; a disabled control is left out.
function readParams(params, out) {
  for (const p of params) {
    const input = $(`p-${p.name}`);
    const raw = input.value.trim();
    if (raw === '' || input.disabled) continue;
    if (p.name === 'seed') { out.seed = raw; continue; } // digits, sent exactly (see toJSON)
    const value = Number(raw);
    if (p.name !== 'max_tokens' && value === p.default) continue;
    out[p.name] = value;
  }
}

// The request's sampling fields, beam search's among them.
function samplingFields() {
  const out = {};
  readParams(state.config.params, out);
  const stops = $('p-stop').value.split('\n').filter((s) => s !== '').map(unescapeStop);
  if (stops.length) out.stop = stops;
  if ($('p-ignore-eos').checked) out.ignore_eos = true;
  if ($('p-use-beam-search').checked) {
    out.use_beam_search = true;
    readParams(state.config.beam_params, out);
    const early = $('p-early-stopping').value;
    if (early !== 'false') out.early_stopping = early === 'true' || early;
  }
  return out;
}

// The output constraint as the server's field. A schema that is not JSON throws: the page says
// so and sends nothing.
function formatFields() {
  const kind = $('format').value;
  const spec = $('format-spec');
  if (spec.hasAttribute('aria-invalid')) { spec.removeAttribute('aria-invalid'); showError(''); }
  if (kind === 'json_object') return { response_format: { type: 'json_object' } };
  if (kind === 'regex') return { guided_regex: spec.value.replace(/\n+$/, '') };
  if (kind === 'choice') return { guided_choice: spec.value.split('\n').filter((c) => c !== '') };
  if (kind !== 'json_schema') return {};
  try {
    const schema = JSON.parse(spec.value);
    return { response_format: { type: 'json_schema', json_schema: { name: 'output', schema } } };
  } catch (err) {
    spec.setAttribute('aria-invalid', 'true');
    $('format-box').open = true;
    spec.focus();
    throw new Error(`Output format: the JSON schema is not valid JSON (${err.message}).`);
  }
}

// Beam search on: the sampling-only controls are off; off: its own are (the server refuses both).
function setBeamSearch() {
  const on = $('p-use-beam-search').checked;
  for (const name of SAMPLING_ONLY) $(`p-${name}`).disabled = on;
  for (const p of state.config.beam_params) $(`p-${p.name}`).disabled = !on;
  $('p-early-stopping').disabled = !on;
  $('beam-status').textContent = on ? '— on' : '';
}

function setFormat() {
  const kind = $('format').value;
  $('format-spec-box').hidden = !FORMAT_TEXT[kind];
  $('format-spec-label').textContent = FORMAT_TEXT[kind] || '';
  $('format-status').textContent = kind ? `— ${$('format').selectedOptions[0].text}` : '';
}

// JSON with the seed as a bare integer: a seed above 2^53 has no exact JS number.
function toJSON(body, indent) {
  const text = JSON.stringify(body, null, indent);
  return text.replace(/"seed": ?"(\d+)"/, (m, digits) => m.replace(`"${digits}"`, digits));
}

function buildRequest() {
  const fields = { ...samplingFields(), ...formatFields() };
  const logprobs = fields.logprobs;
  delete fields.logprobs;
  const body = state.model ? { model: state.model } : {};
  if (state.mode === 'chat') {
    const text = $('user-input').value;
    if (!text.trim()) return null;
    const messages = [...state.history, { role: 'user', content: text }];
    const system = $('system').value.trim();
    if (system) messages.unshift({ role: 'system', content: system });
    Object.assign(body, { messages }, fields);
    if (logprobs !== undefined) Object.assign(body, { logprobs: true, top_logprobs: logprobs });
    return { path: '/v1/chat/completions', body: { ...body, stream: true }, userText: text };
  }
  Object.assign(body, { prompt: $('prompt').value }, fields);
  if (logprobs !== undefined) body.logprobs = logprobs;
  return { path: '/v1/completions', body: { ...body, stream: true } };
}

// -- rendering --------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Colour by probability (red unlikely, green likely); the alternatives on hover or click.
function tokenSpan(text, entries) {
  const span = el('span', 'tok', text);
  const p = Math.exp(Math.min(...entries.map((e) => e.logprob)));
  span.style.backgroundColor = `hsl(${Math.round(p * 120)} 75% 82%)`;
  const lines = entries.map((e) => {
    const alts = e.top.map((a) => `  ${JSON.stringify(a.token)} ${pct(a.logprob)}`);
    return [`${JSON.stringify(e.token)} ${pct(e.logprob)} (logprob ${e.logprob.toFixed(3)})`,
      ...(alts.length ? ['most likely:', ...alts] : [])].join('\n');
  });
  span.title = lines.join('\n');
  span.dataset.info = span.title;
  return span;
}

function pct(logprob) {
  const p = Math.exp(logprob) * 100;
  return `${p >= 1 ? p.toFixed(1) : p.toPrecision(2)}%`;
}

// One choice being streamed into `node`; tokens whose text is still incomplete wait.
class ChoiceView {
  constructor(node) { this.node = node; this.text = ''; this.pending = []; }

  append(text, entries) {
    const box = this.node.closest('.output, .messages');
    const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    this.add(text, entries);
    if (atEnd) box.scrollTop = box.scrollHeight; // follow the text unless the reader scrolled up
  }

  add(text, entries) {
    this.text += text;
    if (!entries) {
      if (text) this.node.append(text);
      return;
    }
    this.pending.push(...entries);
    if (!text) return; // part of a UTF-8 character: shown with the token that completes it
    this.node.append(tokenSpan(text, this.pending));
    this.pending = [];
  }
}

function legacyEntries(lp) {
  if (!lp || !lp.tokens) return null;
  return lp.tokens.map((token, i) => ({
    token, logprob: lp.token_logprobs[i] ?? 0,
    top: Object.entries(lp.top_logprobs[i] || {}).map(([t, l]) => ({ token: t, logprob: l })),
  }));
}

function chatEntries(lp) {
  if (!lp || !lp.content) return null;
  return lp.content.map((e) => ({ token: e.token, logprob: e.logprob, top: e.top_logprobs || [] }));
}

// Where each choice of this request is drawn: completion text, or a chat turn.
function makeTarget(request) {
  const views = new Map();
  let container;
  if (state.mode === 'chat') {
    const user = el('li', 'user');
    user.append(el('span', 'role', 'user'), request.userText);
    container = el('li', 'assistant');
    $('messages').append(user, container);
  } else {
    container = $('output');
    container.replaceChildren();
  }
  return {
    choice(index) {
      if (!views.has(index)) {
        const box = el('div', 'choice');
        const n = request.body.n || 1;
        if (state.mode === 'chat') {
          box.append(el('span', 'role', n > 1 ? `assistant ${index}` : 'assistant'));
        } else {
          if (n > 1) box.append(el('span', 'choice-label', `choice ${index}`));
          box.append(el('span', 'prompt-text', request.body.prompt));
        }
        const gen = el('span', 'gen');
        box.append(gen);
        box.dataset.index = index;
        const before = [...container.children].find((c) => Number(c.dataset.index) > index);
        container.insertBefore(box, before || null);
        views.set(index, new ChoiceView(gen));
      }
      return views.get(index);
    },
    views,
  };
}

// -- a run ------------------------------------------------------------------------------------

function newStats() {
  return { start: performance.now(), first: null, last: null, tokens: 0, usage: null,
    finish: new Map(), stopped: false };
}

function renderStats(s) {
  const parts = [];
  if (s.first !== null) parts.push(`TTFT ${(s.first - s.start).toFixed(0)} ms`);
  const tokens = s.usage ? s.usage.completion_tokens : s.tokens;
  parts.push(`${tokens} tokens`);
  if (s.tokens > 1 && s.last > s.first) {
    parts.push(`${((s.tokens - 1) / ((s.last - s.first) / 1000)).toFixed(1)} tok/s`);
  }
  const reasons = [...s.finish.values()];
  if (s.stopped) parts.push('finish: stopped by you');
  else if (reasons.length) parts.push(`finish: ${[...new Set(reasons)].join(', ')}`);
  else if (state.controller) parts.push('streaming…');
  $('stats').textContent = parts.join(' · ');
}

function onChunk(chunk, target, stats) {
  if (chunk.usage) stats.usage = chunk.usage;
  for (const c of chunk.choices || []) {
    const chat = state.mode === 'chat';
    const text = (chat ? c.delta && c.delta.content : c.text) || '';
    const entries = chat ? chatEntries(c.logprobs) : legacyEntries(c.logprobs);
    const count = entries ? entries.length : (text ? 1 : 0);
    if (count) {
      const now = performance.now();
      if (stats.first === null) stats.first = now;
      stats.last = now;
      stats.tokens += count;
    }
    target.choice(c.index).append(text, entries);
    if (c.finish_reason) stats.finish.set(c.index, c.finish_reason);
  }
  renderStats(stats);
}

function setRunning(running) {
  $('send').disabled = running;
  $('stop').disabled = !running;
  // The mode stays put while a run draws into it.
  document.querySelectorAll('input[name=mode]').forEach((r) => { r.disabled = running; });
  document.body.classList.toggle('running', running);
}

function showError(message) {
  $('error').textContent = message;
  $('error').hidden = !message;
}

async function run() {
  if (state.controller || !state.config) return;
  let request;
  try { request = buildRequest(); } catch (err) { showError(err.message); return; }
  if (!request) return;
  showError('');
  const controller = new AbortController();
  state.controller = controller;
  setRunning(true);
  const target = makeTarget(request);
  const stats = newStats();
  renderStats(stats);
  let failed = false;
  try {
    const body = { ...request.body, stream_options: { include_usage: true } };
    const response = await fetch(request.path, {
      method: 'POST', headers: headers(), body: toJSON(body), signal: controller.signal,
    });
    if (!response.ok) throw await errorOf(response);
    for await (const data of sseData(response)) {
      if (data === '[DONE]') break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw streamError(chunk.error);
      onChunk(chunk, target, stats);
    }
  } catch (err) {
    if (err.name === 'AbortError') stats.stopped = true;
    else { failed = true; showError(describe(err)); }
  } finally {
    state.controller = null;
    setRunning(false);
    finishTurn(request, target, stats, failed);
    renderStats(stats);
    document.body.dataset.runs = ++state.runs; // lets a test (or a person) see a run end
  }
}

// Chat: the first choice continues the conversation (kept even when stopped part-way).
function finishTurn(request, target, stats, failed) {
  if (state.mode !== 'chat') return;
  const first = target.views.get(0);
  if (failed || (stats.stopped && !(first && first.text))) {
    $('messages').lastElementChild.remove(); // nothing usable: the message stays in the box
    $('messages').lastElementChild.remove();
    return;
  }
  state.history.push({ role: 'user', content: request.userText },
    { role: 'assistant', content: first ? first.text : '' });
  $('user-input').value = '';
}

function stop() { if (state.controller) state.controller.abort(); }

function clearAll() {
  stop();
  if (state.mode === 'chat') {
    state.history = [];
    $('messages').replaceChildren();
  } else {
    $('output').replaceChildren();
  }
  showError('');
  $('stats').textContent = 'Ready.';
}

// -- copy as code -----------------------------------------------------------------------------

function py(value, indent = '') {
  if (value === null || value === undefined) return 'None';
  if (value === true) return 'True';
  if (value === false) return 'False';
  if (Array.isArray(value)) return `[${value.map((v) => py(v, indent)).join(', ')}]`;
  if (typeof value === 'object') {
    const items = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${py(v, indent)}`);
    return `{${items.join(', ')}}`;
  }
  return JSON.stringify(value); // strings and numbers: JSON's escapes are Python's too
}

function curlCommand(request) {
  const url = new URL(request.path, location.href).href;
  const body = toJSON(request.body).replace(/'/g, '\'\\\'\'');
  const auth = apiKey() ? ' \\\n  -H "Authorization: Bearer $GPT2SERVE_API_KEY"' : '';
  return `curl -N ${url} \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d '${body}'`;
}

function pythonCode(request) {
  const base = new URL('/v1', location.href).href;
  const kind = state.mode === 'chat' ? 'chat' : 'completion';
  const body = { ...request.body, model: request.body.model || 'MODEL' };
  const args = [`model=${py(body.model)}`];
  const extra = {};
  for (const [k, v] of Object.entries(body)) {
    if (k === 'model') continue;
    const literal = k === 'seed' ? v : py(v);
    if (SDK_FIELDS[kind].includes(k)) args.push(`${k}=${literal}`);
    else extra[k] = v;
  }
  if (Object.keys(extra).length) args.push(`extra_body=${py(extra)}`);
  const key = apiKey() ? 'os.environ["GPT2SERVE_API_KEY"]' : '"unused"';
  const call = kind === 'chat' ? 'client.chat.completions.create' : 'client.completions.create';
  const piece = kind === 'chat' ? 'chunk.choices[0].delta.content or ""' : 'chunk.choices[0].text';
  return [
    ...(apiKey() ? ['import os\n'] : []), 'from openai import OpenAI\n',
    `client = OpenAI(base_url=${py(base)}, api_key=${key})`,
    `stream = ${call}(\n    ${args.join(',\n    ')},\n)`,
    'for chunk in stream:', `    if chunk.choices:\n        print(${piece}, end="", flush=True)`,
  ].join('\n');
}

async function copyCode(kind) {
  if (!state.config) return;
  let request;
  try { request = buildRequest(); } catch (err) { showError(err.message); return; }
  request = request || { path: '/v1/chat/completions', body: { messages: [] } };
  // The key itself never goes into copied text: the snippet reads it from the environment.
  const text = kind === 'curl' ? curlCommand(request) : pythonCode(request);
  $('code').textContent = text;
  $('code-box').open = true;
  const name = kind === 'curl' ? 'curl' : 'Python';
  $('copy-status').textContent = `— ${name}`;
  // The clipboard needs https or localhost, and a browser may leave the promise pending
  // (a permission prompt): the snippet is on the page either way.
  const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error('timeout')), 1000));
  try {
    await Promise.race([navigator.clipboard.writeText(text), timeout]);
    $('copy-status').textContent = `— ${name}: copied`;
  } catch (_) {
    $('copy-status').textContent = `— ${name}: select the text to copy it`;
  }
}

// -- start ------------------------------------------------------------------------------------

async function loadModel() {
  try {
    const models = await getJSON('/v1/models');
    state.model = models.data[0].id;
    $('model').textContent = `model: ${state.model}`;
  } catch (err) {
    state.model = null;
    $('model').textContent = err.status === 401 ? 'API key needed' : 'model unknown';
    if (err.status !== 401) showError(describe(err));
  }
}

function setMode(mode) {
  state.mode = mode;
  $('completion-pane').hidden = mode !== 'completion';
  $('chat-pane').hidden = mode !== 'chat';
  $('send').textContent = mode === 'chat' ? 'Send' : 'Generate';
}

function tokenInfo(event) {
  const span = event.target.closest('.tok');
  if (!span) return;
  $('token-info').hidden = false;
  const info = span.dataset.info.replace(/:\n\s*/g, ': ');
  $('token-info').textContent = info.replace(/\n\s*/g, ' · ');
}

async function start() {
  $('api-key').value = apiKey();
  $('api-key').addEventListener('change', () => {
    sessionStorage.setItem(KEY_STORE, $('api-key').value.trim());
    showError('');
    loadModel();
  });
  document.querySelectorAll('input[name=mode]').forEach((r) =>
    r.addEventListener('change', () => setMode(r.value)));
  $('send').addEventListener('click', run);
  $('stop').addEventListener('click', stop);
  $('clear').addEventListener('click', clearAll);
  $('copy-curl').addEventListener('click', () => copyCode('curl'));
  $('copy-python').addEventListener('click', () => copyCode('python'));
  $('format').addEventListener('change', setFormat);
  setFormat();
  for (const id of ['prompt', 'user-input']) {
    $(id).addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); }
    });
  }
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') stop(); });
  for (const id of ['output', 'messages']) {
    $(id).addEventListener('mouseover', tokenInfo);
    $(id).addEventListener('click', tokenInfo);
  }
  if (matchMedia('(max-width: 48rem)').matches) $('params-box').open = false;
  try {
    state.config = await getJSON('/playground/config.json');
    buildParams(state.config.params, $('params'));
    buildParams(state.config.beam_params, $('beam-params'));
    $('p-use-beam-search').addEventListener('change', setBeamSearch);
    setBeamSearch();
  } catch (err) {
    showError(`Could not load the parameters: ${describe(err)}`);
  }
  await loadModel();
  document.body.dataset.ready = 'true';
}

start();
