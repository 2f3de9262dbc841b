// FHIR.js (npm "fhir", Lantana Consulting Group; pinned in package.json) over many Bundles in one
// process: the second FHIR R4 validator of the tests (tests/oracles/fhirjs.py runs it), not
// Passerelle's models (fhir.resources) and not Medplum's.
//
//   node validate_bundles.mjs BUNDLES.json
//
// reads a JSON array [{"name": "...", "bundle": {...}}] and prints one JSON document:
// {"validated": N, "failures": [{"name", "errors": [{"resource", "location", "message"}]}]}, a
// failure for every Bundle with at least one error. FHIR.js checks the Bundle and each entry's
// resource against its bundled R4 (4.0) profiles: unknown properties (errorOnUnexpected),
// cardinality, data types and the codes of required bindings. Its "fatal" messages (an unknown
// resourceType, which stops it looking further into that resource) are errors too; its warnings
// and information messages (a value set it does not ship, for example) are not. "resource" is where in the
// Bundle the error is (Bundle.entry[i].resource, with its type and id when it has them).
import { readFileSync } from 'node:fs';
import { errorsOf, fhir } from './fhirjs_r4.mjs';

const items = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// FHIR.js names a resource by its id, or by its path in the Bundle when it has none.
function where(bundle, resourceId) {
  const entries = bundle.entry ?? [];
  const match = /^Bundle\.entry\[(\d+)\]\.resource$/.exec(resourceId ?? '');
  const index = match
    ? Number(match[1])
    : entries.findIndex((e) => e.resource?.id !== undefined && e.resource.id === resourceId);
  const resource = entries[index]?.resource;
  if (!resource) return resourceId || 'Bundle';
  return `Bundle.entry[${index}].resource (${resource.resourceType}/${resource.id ?? '(no id)'})`;
}

const failures = [];
for (const { name, bundle } of items) {
  const result = fhir.validate(bundle, { errorOnUnexpected: true });
  const errors = errorsOf(result)
    .map((m) => ({ resource: where(bundle, m.resourceId), location: m.location, message: m.message }));
  if (errors.length) failures.push({ name, errors });
}
console.log(JSON.stringify({ validated: items.length, failures }));
