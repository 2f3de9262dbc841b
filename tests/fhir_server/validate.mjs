// The second, independent FHIR R4 validator of the integration tests: FHIR.js (npm "fhir",
// Lantana Consulting Group; pinned in package.json), not Passerelle's models and not Medplum's.
//
//   node validate.mjs RESOURCES.json
//
// reads a JSON array of resources and prints one JSON line: [{"resource": "Type/id",
// "errors": [{"location", "message"}]}] for every resource with at least one error. FHIR.js
// checks each element against its bundled R4 (4.0) profiles: unknown properties
// (errorOnUnexpected), cardinality, data types and codes of required bindings. Its warnings and
// information messages (a value set it does not ship, for example) are not errors; its fatal
// messages are, and primitive values are checked with the anchored R4 expressions
// (fhirjs_r4.mjs: FHIR.js's own let "1962-03-52" pass as a date).
import { readFileSync } from 'node:fs';
import { errorsOf, fhir } from './fhirjs_r4.mjs';

const resources = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const failures = [];
for (const resource of resources) {
  const result = fhir.validate(resource, { errorOnUnexpected: true });
  const errors = errorsOf(result)
    .map((m) => ({ location: m.location, message: m.message }));
  if (errors.length) failures.push({ resource: `${resource.resourceType}/${resource.id}`, errors });
}
console.log(JSON.stringify(failures));
