// The offline API reference: /openapi.json drawn as one section per operation, no CDN needed.
'use strict';

const $ = (id) => document.getElementById(id);

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function resolve(spec, schema) {
  const ref = schema && schema.$ref;
  return ref ? spec.components.schemas[ref.split('/').pop()] : schema || {};
}

// A bound past 2^53 has no exact JS number (the seed's 2^63 - 1): say so rather than misprint.
function num(n) {
  return Number.isSafeInteger(n) || !Number.isInteger(n) ? n : `≈${n.toExponential(3)}`;
}

// A property's type and bounds in one line, e.g. `number [0, 2]` or `string | null`.
function typeOf(spec, schema) {
  if (schema === false) return 'refused (see description)';
  const s = resolve(spec, schema);
  if (s.anyOf) return s.anyOf.map((x) => typeOf(spec, x)).join(' | ');
  if (schema.$ref) return schema.$ref.split('/').pop();
  let text = s.type || (s.const !== undefined ? JSON.stringify(s.const) : 'any');
  if (s.type === 'array') text = `array of ${typeOf(spec, s.items || {})}`;
  if (s.enum) text += ` ${JSON.stringify(s.enum)}`;
  const low = s.exclusiveMinimum !== undefined ? `(${num(s.exclusiveMinimum)}`
    : s.minimum !== undefined ? `[${num(s.minimum)}` : null;
  const high = s.maximum !== undefined ? `${num(s.maximum)}]` : null;
  if (low || high) text += ` ${low || '(-∞'}, ${high || '∞)'}`;
  return text;
}

function fieldsTable(spec, schema) {
  const s = resolve(spec, schema);
  const table = el('table');
  const head = el('tr');
  ['field', 'type', 'default', 'description'].forEach((h) => head.append(el('th', null, h)));
  table.append(head);
  for (const [name, prop] of Object.entries(s.properties || {})) {
    const row = el('tr');
    const required = (s.required || []).includes(name) ? ' *' : '';
    row.append(el('td', null, name + required), el('td', null, typeOf(spec, prop)),
      el('td', null, prop && prop.default !== undefined ? JSON.stringify(prop.default) : ''),
      el('td', null, (prop && prop.description) || ''));
    table.append(row);
  }
  return table;
}

function operation(spec, path, method, op) {
  const section = el('section');
  section.id = `${method}-${path}`.replace(/[^\w-]+/g, '-');
  const title = el('h2');
  title.append(el('span', 'method', method.toUpperCase()), ` ${path}`);
  section.append(title);
  if (op.summary) section.append(el('p', null, op.summary));
  const body = op.requestBody && op.requestBody.content['application/json'];
  if (body) {
    const schema = resolve(spec, body.schema);
    if (schema.description) section.append(el('p', 'hint', schema.description));
    section.append(fieldsTable(spec, body.schema));
  }
  const codes = Object.entries(op.responses || {}).map(([code, r]) => `${code} ${r.description}`);
  section.append(el('p', 'hint', `Responses: ${codes.join(' · ')}`));
  return section;
}

async function start() {
  const key = sessionStorage.getItem('gpt2serve.apiKey'); // the playground's, if one was entered
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const response = await fetch('/openapi.json', { headers });
  if (!response.ok) throw new Error(`${response.status}: /openapi.json could not be read`);
  const spec = await response.json();
  const list = $('operations');
  const toc = el('ul', 'toc');
  list.replaceChildren(toc);
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const section = operation(spec, path, method, op);
      const link = el('a', null, `${method.toUpperCase()} ${path}`);
      link.href = `#${section.id}`;
      const entry = el('li');
      entry.append(link);
      toc.append(entry);
      list.append(section);
    }
  }
  document.body.dataset.ready = 'true';
}

start().catch((err) => { $('error').textContent = err.message; $('error').hidden = false; });
