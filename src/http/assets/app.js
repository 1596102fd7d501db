// The status page: polls the node's JSON API and draws the tables and a 3D preview per
// result. Everything comes from the node itself (three.js is vendored, see the import map).
//
// Values from DICOM files are put into the page as text (textContent), never as HTML.

import * as THREE from 'three';
import { STLLoader } from './vendor/three/STLLoader.js';
import { OrbitControls } from './vendor/three/OrbitControls.js';

const REFRESH_MS = 3000;
const ROWS = 50;
const PREVIEWS = 12;

const $ = (id) => document.getElementById(id);
let session = { authenticated: false, token_configured: false };
const previews = new Map(); // result SOP Instance UID -> { card, dispose }

function when(t) {
  if (t === null || t === undefined) return '';
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

function duration(s) {
  if (s === null || s === undefined) return '';
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - 60 * m)} s`;
}

function say(text) {
  $('message').textContent = text || '';
}

class Unauthorized extends Error {}

async function getJson(url) {
  const r = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
  if (r.status === 401) throw new Unauthorized((await r.json().catch(() => ({}))).error || 'log in');
  // /health/ready answers 503 with its JSON when not ready.
  if (!r.ok && r.status !== 503) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

// A cell: a string, or { text, cls, retry } (retry: an outbox id, for the Retry button).
function cell(spec) {
  const td = document.createElement('td');
  const s = typeof spec === 'object' && spec !== null ? spec : { text: spec };
  if (s.cls) td.className = s.cls;
  if (s.retry !== undefined) {
    const b = document.createElement('button');
    b.className = 'retry';
    b.dataset.id = String(s.retry);
    b.textContent = 'Retry';
    td.append(b);
  } else {
    td.textContent = s.text === null || s.text === undefined ? '' : String(s.text);
  }
  return td;
}

// Rows keyed by `key`; a row is rebuilt only when its content changed, so that a button
// under the pointer is not replaced by an identical one at every refresh.
function renderRows(tableId, items, key, build, empty) {
  const tbody = $(tableId).tBodies[0];
  const old = new Map([...tbody.rows].map((tr) => [tr.dataset.key, tr]));
  const rows = items.map((item) => {
    const { cells, attrs } = build(item);
    const k = String(key(item));
    const sig = JSON.stringify([cells, attrs]);
    const existing = old.get(k);
    if (existing && existing.dataset.sig === sig) return existing;
    const tr = document.createElement('tr');
    tr.dataset.key = k;
    tr.dataset.sig = sig;
    for (const [name, value] of Object.entries(attrs)) tr.setAttribute(name, String(value));
    tr.append(...cells.map(cell));
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement('tr');
    tr.dataset.key = '';
    const td = cell({ text: empty, cls: 'empty' });
    td.colSpan = $(tableId).tHead.rows[0].cells.length;
    tr.append(td);
    rows.push(tr);
  }
  tbody.replaceChildren(...rows);
}

function patient(row) {
  if (!('patient_name' in row)) return { text: '(log in to see)', cls: 'empty' };
  return [row.patient_name, row.patient_id && `(${row.patient_id})`].filter(Boolean).join(' ');
}

function drawSeries(series) {
  renderRows('series', series, (s) => s.series_uid, (s) => ({
    attrs: { 'data-uid': s.series_uid, 'data-state': s.state },
    cells: [when(s.received_at), patient(s), s.calling_ae, s.modality, s.description,
      s.instances, s.state, { text: s.series_uid, cls: 'uid' }],
  }), 'no series received yet');
}

function drawJobs(jobs) {
  renderRows('jobs', jobs, (j) => j.id, (j) => ({
    attrs: { 'data-uid': j.series_uid, 'data-id': j.id, 'data-state': j.state },
    cells: [j.id, j.rule, j.state, duration(j.duration_seconds),
      j.error ? { text: j.error, cls: 'error' } : (j.summary || ''),
      { text: j.series_uid, cls: 'uid' }],
  }), 'no jobs yet');
}

function drawDeliveries(d) {
  renderRows('destinations', d.destinations, (x) => x.destination, (x) => ({
    attrs: { 'data-destination': x.destination, 'data-pending': x.pending, 'data-failed': x.failed },
    cells: [x.destination, x.pending, x.failed, when(x.oldest_pending_at),
      x.last_error ? { text: x.last_error, cls: 'error' } : ''],
  }), 'no deliveries yet');
  renderRows('deliveries', d.deliveries, (r) => r.id, (r) => ({
    attrs: { 'data-uid': r.sop_instance_uid, 'data-id': r.id, 'data-state': r.state },
    cells: [r.id, r.destination, r.state, r.attempts,
      r.last_error ? { text: r.last_error, cls: 'error' } : '', when(r.sent_at),
      r.state === 'failed' ? { retry: r.id } : ''],
  }), 'no deliveries yet');
}

// Storage Commitment transactions: open ones first (the node's order). A failure event
// (event_type 2) or an undeliverable report is what someone must look at.
function drawCommitments(commitments) {
  renderRows('commitments', commitments, (c) => c.transaction_uid, (c) => ({
    attrs: {
      'data-uid': c.transaction_uid,
      'data-state': c.state === 'undeliverable' ? 'failed' : c.state,
      'data-commitment': c.state,
    },
    cells: [when(c.requested_at), c.calling_ae, c.state, c.items,
      c.failed ? { text: c.failed, cls: 'error' } : c.failed, c.attempts, when(c.reported_at),
      c.last_error ? { text: `${c.transaction_uid} (${c.last_error})`, cls: 'error' }
        : { text: c.transaction_uid, cls: 'uid' }],
  }), 'no commitment requests yet');
}

// MPPS steps: how much of what each step lists has arrived.
function drawMpps(steps) {
  renderRows('mpps', steps, (m) => m.sop_instance_uid, (m) => ({
    attrs: {
      'data-uid': m.sop_instance_uid,
      'data-status': m.status,
      'data-state': m.status === 'DISCONTINUED' ? 'failed' : (m.status === 'COMPLETED' ? 'done' : 'running'),
    },
    cells: [when(m.updated_at), m.calling_ae, m.status, m.modality,
      `${m.series_complete}/${m.series_listed}`, `${m.instances_stored}/${m.instances_listed}`,
      'pps_id' in m ? m.pps_id : { text: '(log in to see)', cls: 'empty' },
      { text: m.sop_instance_uid, cls: 'uid' }],
  }), 'no procedure steps yet');
}

// A text label that always faces the camera.
function label(text, color, size) {
  const c = document.createElement('canvas');
  c.width = c.height = 64;
  const g = c.getContext('2d');
  g.fillStyle = color;
  g.font = 'bold 52px sans-serif';
  g.textAlign = 'center';
  g.textBaseline = 'middle';
  g.fillText(text, 32, 35);
  const sprite = new THREE.Sprite(new THREE.SpriteMaterial({ map: new THREE.CanvasTexture(c), depthTest: false }));
  sprite.scale.set(size, size, 1);
  return sprite;
}

// The DICOM patient coordinate system (LPS): +x towards the patient's left, +y posterior,
// +z superior. The mesh is in these coordinates (mm), so the axes are drawn through its
// centre and labelled at both ends.
function patientAxes(scene, center, length) {
  const axes = [
    ['L', [1, 0, 0], '#ff6b6b'], ['R', [-1, 0, 0], '#ff6b6b'],
    ['P', [0, 1, 0], '#7bd88f'], ['A', [0, -1, 0], '#7bd88f'],
    ['S', [0, 0, 1], '#6cb6ff'], ['I', [0, 0, -1], '#6cb6ff'],
  ];
  for (const [text, dir, color] of axes) {
    const d = new THREE.Vector3(...dir);
    const end = d.clone().multiplyScalar(length).add(center);
    const line = new THREE.Line(
      new THREE.BufferGeometry().setFromPoints([center, end]),
      new THREE.LineBasicMaterial({ color }),
    );
    scene.add(line);
    const s = label(text, color, length * 0.22);
    s.position.copy(d.multiplyScalar(length * 1.12).add(center));
    scene.add(s);
  }
}

// Every structure of a result (bone, skin, ...) is one layer, in its recommended colour and
// opacity; the camera frames them all once the last has loaded.
function preview(canvas, layers, metrics) {
  const renderer = new THREE.WebGLRenderer({ canvas, antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio || 1);
  renderer.setSize(canvas.clientWidth || 320, canvas.clientHeight || 320, false);
  const scene = new THREE.Scene();
  scene.background = new THREE.Color(0x1b1f24);
  const camera = new THREE.PerspectiveCamera(35, 1, 0.1, 10000);
  camera.up.set(0, 0, 1); // superior up
  scene.add(new THREE.HemisphereLight(0xffffff, 0x404050, 1.6));
  const light = new THREE.DirectionalLight(0xffffff, 1.8);
  camera.add(light);
  scene.add(camera);
  const controls = new OrbitControls(camera, canvas);
  const render = () => renderer.render(scene, camera);
  controls.addEventListener('change', render);
  const box = new THREE.Box3();
  let pending = layers.length;
  let triangles = 0;
  const loaded = () => {
    pending -= 1;
    if (pending > 0) return;
    if (box.isEmpty()) {
      canvas.dataset.loaded = 'error';
      return;
    }
    const center = box.getCenter(new THREE.Vector3());
    const size = box.getSize(new THREE.Vector3());
    const r = Math.max(size.x, size.y, size.z) / 2 || 1;
    patientAxes(scene, center, r * 1.3);
    // Seen from the front (anterior, -y), superior up: the patient's left is on the right.
    camera.position.set(center.x, center.y - r * 6, center.z);
    camera.near = r / 50;
    camera.far = r * 50;
    camera.updateProjectionMatrix();
    controls.target.copy(center);
    controls.update();
    render();
    metrics('triangles', triangles.toLocaleString());
    metrics('size (L-R x A-P x S-I)', `${size.x.toFixed(1)} x ${size.y.toFixed(1)} x ${size.z.toFixed(1)} mm`);
    canvas.dataset.loaded = 'true';
  };
  layers.forEach((layer, i) => {
    new STLLoader().load(layer.url, (geometry) => {
      geometry.computeVertexNormals();
      geometry.computeBoundingBox();
      box.union(geometry.boundingBox);
      triangles += geometry.attributes.position.count / 3;
      const opacity = layer.opacity === null || layer.opacity === undefined ? 1 : layer.opacity;
      const mesh = new THREE.Mesh(geometry, new THREE.MeshStandardMaterial({
        color: layer.colour || '#e9dfc8',
        roughness: 0.65,
        metalness: 0,
        side: THREE.DoubleSide,
        transparent: opacity < 1,
        opacity,
        depthWrite: opacity >= 1,
      }));
      // Opaque layers first, then the see-through ones, so that skin shows the bone under it.
      mesh.renderOrder = opacity < 1 ? 1 + i : 0;
      scene.add(mesh);
      loaded();
    }, undefined, (err) => {
      metrics('preview', `${layer.label || 'the mesh'} could not be loaded: ${err && err.message ? err.message : err}`);
      loaded();
    });
  });
  return () => {
    controls.dispose();
    renderer.dispose();
  };
}

// The structures of a result as a legend: a colour swatch and the label of each.
function legend(layers) {
  const ul = document.createElement('ul');
  ul.className = 'legend';
  for (const layer of layers) {
    const li = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = layer.colour || '#e9dfc8';
    li.append(swatch, document.createTextNode(layer.label || 'surface'));
    li.dataset.colour = layer.colour || '';
    ul.append(li);
  }
  return ul;
}

function drawResults(results) {
  const box = $('results');
  const shown = results.filter((r) => r.meshes && r.meshes.length > 0).slice(0, PREVIEWS);
  const keep = new Set(shown.map((r) => r.sop_instance_uid));
  for (const [uid, p] of previews) {
    if (!keep.has(uid)) {
      p.dispose();
      p.card.remove();
      previews.delete(uid);
    }
  }
  const cards = shown.map((r) => {
    const uid = r.sop_instance_uid;
    let p = previews.get(uid);
    if (!p) {
      const card = document.createElement('div');
      card.className = 'result';
      card.dataset.uid = uid;
      const canvas = document.createElement('canvas');
      canvas.dataset.result = uid;
      canvas.width = canvas.height = 320;
      const dl = document.createElement('dl');
      card.append(canvas, legend(r.meshes), dl);
      const metrics = (name, value) => {
        const dt = document.createElement('dt');
        dt.textContent = name;
        const dd = document.createElement('dd');
        dd.textContent = value === null || value === undefined ? '' : String(value);
        dl.append(dt, dd);
      };
      metrics('result', r.summary || '');
      if ('patient_name' in r) metrics('patient', patient(r));
      metrics('source series', `${r.modality || ''} ${r.series_uid}`);
      metrics('rule / version', `${r.rule} / ${r.version}`);
      metrics('finished', when(r.finished_at));
      box.append(card); // laid out before the renderer reads its size
      p = { card, dispose: preview(canvas, r.meshes, metrics) };
      previews.set(uid, p);
    }
    return p.card;
  });
  if (cards.length === 0) {
    const none = document.createElement('p');
    none.className = 'empty';
    none.textContent = 'no results yet';
    box.replaceChildren(none);
  } else {
    box.replaceChildren(...cards);
  }
}

function drawSession() {
  $('login').hidden = session.authenticated || !session.token_configured;
  $('logout').hidden = !session.authenticated;
  $('ae').textContent = session.ae_title || '';
}

async function refresh() {
  try {
    const ready = await getJson('/health/ready');
    $('ready').dataset.ready = String(ready.ready);
    const failing = Object.entries(ready.checks).filter(([, c]) => !c.ok);
    $('ready').textContent = ready.ready ? 'ready' : 'not ready';
    $('ready').title = failing.map(([n, c]) => `${n}: ${c.detail}`).join('\n');
    session = await getJson('/api/session');
    drawSession();
    const [series, jobs, deliveries, results, commitments, mpps] = await Promise.all([
      getJson(`/api/series?limit=${ROWS}`),
      getJson(`/api/jobs?limit=${ROWS}`),
      getJson(`/api/deliveries?limit=${ROWS}`),
      getJson(`/api/results?limit=${PREVIEWS}`),
      getJson(`/api/commitments?limit=${ROWS}`),
      getJson(`/api/mpps?limit=${ROWS}`),
    ]);
    drawSeries(series.series);
    drawJobs(jobs.jobs);
    drawDeliveries(deliveries);
    drawCommitments(commitments.commitments);
    drawMpps(mpps.mpps);
    drawResults(results.results);
    $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    if ($('message').dataset.sticky !== 'true') say('');
  } catch (e) {
    if (e instanceof Unauthorized) {
      $('login').hidden = false;
      say(`Log in to see the node's data: ${e.message}`);
    } else {
      say(`Cannot reach the node: ${e.message}`);
    }
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}

document.addEventListener('click', async (ev) => {
  const button = ev.target.closest('button.retry');
  if (!button) return;
  button.disabled = true;
  const r = await fetch(`/api/deliveries/${button.dataset.id}/retry`, { method: 'POST', credentials: 'same-origin' });
  if (r.ok) {
    say('');
    const row = button.closest('tr');
    row.dataset.state = 'pending';
    row.dataset.sig = ''; // redrawn from the next answer whatever it says
  } else {
    const body = await r.json().catch(() => ({}));
    $('message').dataset.sticky = 'true';
    say(`Retry refused: ${body.error || `HTTP ${r.status}`}`);
    setTimeout(() => { $('message').dataset.sticky = ''; }, 10000);
    button.disabled = false;
  }
});

refresh();
