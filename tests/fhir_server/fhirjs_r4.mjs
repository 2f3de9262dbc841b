// FHIR.js (npm "fhir", Lantana Consulting Group; pinned in package.json) set up once for both
// validator scripts (validate.mjs, validate_bundles.mjs): the R4 primitive expressions anchored,
// and the messages that count as errors.
import fhirjs from 'fhir';
import fhirjsConstants from 'fhir/constants.js';

// FHIR.js 4.12.0 tests primitive values with unanchored regular expressions, so "1962-03-52"
// passes as a date (its prefix "1962-03" matches). The regular expressions of FHIR R4
// (datatypes.html, one per primitive type, each describing the whole value) replace them here,
// anchored; FHIR.js's own checks then read these.
const R4 = {
  PrimitiveDateRegex: /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?$/,
  PrimitiveDateTimeRegex: /^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$/,
  PrimitiveTimeRegex: /^([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?$/,
  PrimitiveCodeRegex: /^[^\s]+(\s[^\s]+)*$/,
  PrimitiveOidRegex: /^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$/,
  PrimitiveIdRegex: /^[A-Za-z0-9\-.]{1,64}$/,
  PrimitivePositiveIntRegex: /^\+?[1-9][0-9]*$/,
  PrimitiveUnsignedIntRegex: /^([0]|([1-9][0-9]*))$/,
  PrimitiveIntegerRegex: /^-?([0]|([1-9][0-9]*))$/,
  PrimitiveDecimalRegex: /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/,
};
const { Constants } = fhirjsConstants;
for (const [name, regex] of Object.entries(R4)) {
  if (!(Constants[name] instanceof RegExp)) throw new Error(`FHIR.js has no Constants.${name}`);
  Constants[name] = regex;
}

const { Fhir } = fhirjs;
/** The validator, with the anchored R4 expressions in place. */
export const fhir = new Fhir();
/** FHIR.js messages that are errors: "error" and "fatal" (an unknown resourceType, which stops
 * it looking further into that resource); warnings and information (a value set it does not
 * ship) are not. */
export function errorsOf(result) {
  return result.messages.filter((m) => m.severity === 'error' || m.severity === 'fatal');
}
