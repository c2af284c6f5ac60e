#!/usr/bin/env node
// Lookbook over HTTP/JSON, from Node 20 with nothing but built-ins (fetch):
// a storefront's four calls.
//
//   1. POST /v1/products          import a product from its photo
//   2. POST /v1/recommend/similar products that look like it
//   3. POST /v1/interactions      the shopper viewed it and put the first
//                                 similar product in the cart
//   4. POST /v1/recommend/user    what that shopper should see next, and why
//
// Bodies follow the proto3 JSON mapping of proto/lookbook/v1/recommender.proto:
// lowerCamelCase names, 64-bit integers as strings, bytes as base64, enums by
// name, and fields at their default value left out (so `created: false`,
// `reason: ""` or an empty `items` simply are not there).
//
//   LOOKBOOK_TOKEN=... node examples/node/client.mjs --url http://127.0.0.1:8080 \
//       --photo shirt.jpg --product-id sku-1 \
//       --attribute articleType=Shirts --attribute baseColour=Blue --shopper alice
//
// The last line printed is machine-checkable:
//   RESULT {"similar":[ids],"forUser":[ids],"reasons":[reasons]}
// Exit status: 0 on success, 1 when a call fails (status and message on
// stderr), 2 on bad arguments. For https:// with a private CA, run with
// NODE_EXTRA_CA_CERTS=ca.pem.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

const USAGE = `usage: node client.mjs --url URL --photo PATH --product-id ID
         [--attribute KEY=VALUE ...] [--shopper ID] [--catalog-product ID ...]
         [--k N] [--timeout SECONDS]
The bearer token, when the server wants one, comes from $LOOKBOOK_TOKEN.`;

function usage(message) {
  console.error(`error: ${message}\n${USAGE}`);
  process.exit(2);
}

function parseCli(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        url: { type: "string", default: "http://127.0.0.1:8080" },
        photo: { type: "string" },
        "product-id": { type: "string" },
        attribute: { type: "string", multiple: true, default: [] },
        shopper: { type: "string", default: "example-shopper" },
        "catalog-product": { type: "string", multiple: true, default: [] },
        k: { type: "string", default: "5" },
        timeout: { type: "string", default: "30" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (e) {
    usage(e.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.photo) usage("--photo is required");
  if (!values["product-id"]) usage("--product-id is required");

  const attributes = {};
  for (const item of values.attribute) {
    const eq = item.indexOf("=");
    if (eq <= 0) usage(`--attribute wants KEY=VALUE, got ${JSON.stringify(item)}`);
    attributes[item.slice(0, eq)] = item.slice(eq + 1);
  }
  let image;
  try {
    image = readFileSync(values.photo);
  } catch (e) {
    usage(`cannot read --photo ${values.photo}: ${e.code ?? e.message}`);
  }
  const k = Number(values.k);
  if (!Number.isInteger(k) || k <= 0) usage("--k must be a positive integer");
  const timeoutMs = Number(values.timeout) * 1000;
  if (!(timeoutMs > 0)) usage("--timeout must be a positive number of seconds");

  return {
    url: values.url.replace(/\/+$/, ""),
    productId: values["product-id"],
    image,
    attributes,
    shopper: values.shopper,
    catalogProducts: values["catalog-product"],
    k,
    timeoutMs,
  };
}

class CallFailed extends Error {}

// POSTs `body` as JSON and returns the parsed answer; throws CallFailed with
// the server's {"error": {code, status, message}} on a non-2xx answer.
async function post(opts, path, body) {
  const headers = { "content-type": "application/json", accept: "application/json" };
  const token = process.env.LOOKBOOK_TOKEN;
  if (token) headers.authorization = `Bearer ${token}`;
  let response, text;
  try {
    response = await fetch(opts.url + path, {
      method: "POST",
      headers,
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(opts.timeoutMs),
    });
    text = await response.text();
  } catch (e) {
    const why = e.name === "TimeoutError"
      ? `no answer within ${opts.timeoutMs / 1000} s`
      : `${e.message}${e.cause ? ` (${e.cause.code ?? e.cause.message})` : ""}`;
    throw new CallFailed(`POST ${path} failed: ${why}`);
  }
  let json;
  try {
    json = text ? JSON.parse(text) : {};
  } catch {
    json = undefined;
  }
  if (!response.ok) {
    const err = json?.error;
    const detail = err
      ? `${err.status ?? "UNKNOWN"}: ${err.message ?? ""}`
      : text.slice(0, 200) || response.statusText;
    throw new CallFailed(`POST ${path} failed: HTTP ${response.status} ${detail}`);
  }
  if (json === undefined || typeof json !== "object") {
    throw new CallFailed(`POST ${path}: answer is not a JSON object: ${text.slice(0, 200)}`);
  }
  return json;
}

// A Recommendation with proto3 JSON defaults filled in.
function recommendation(item) {
  return {
    productId: item.productId ?? "",
    score: Number(item.score ?? 0), // a number, or "NaN"/"Infinity" as strings
    attributes: item.attributes ?? {},
    reason: item.reason ?? "",
    hasThumbnail: item.hasThumbnail ?? false,
  };
}

async function run(opts) {
  // 1. Import the product from its photo: the server embeds the image, makes
  //    a thumbnail and stores both; searchable when this returns.
  const added = await post(opts, "/v1/products", {
    productId: opts.productId,
    image: opts.image.toString("base64"),
    attributes: opts.attributes,
  });
  const created = added.created ?? false;
  const catalogSize = String(added.catalogSize ?? "0"); // uint64: a JSON string
  console.log(`AddProduct ${opts.productId}: created=${created} catalogSize=${catalogSize}`);

  // 2. Products that look like it (the query product itself is excluded).
  const similar = ((await post(opts, "/v1/recommend/similar", {
    productId: opts.productId,
    k: opts.k,
  })).items ?? []).map(recommendation);
  console.log(`RecommendSimilar ${opts.productId}: ${similar.length} items`);
  for (const item of similar) {
    console.log(`  ${item.productId}  score=${item.score.toFixed(4)}`);
  }

  // 3. The shopper viewed the new product (and any --catalog-product) and put
  //    the first similar one in the cart.
  const interactions = [[opts.productId, "ACTION_VIEW"]];
  for (const id of opts.catalogProducts) interactions.push([id, "ACTION_VIEW"]);
  if (similar.length > 0) interactions.push([similar[0].productId, "ACTION_ADD_TO_CART"]);
  for (const [productId, action] of interactions) {
    await post(opts, "/v1/interactions", {
      interaction: { userId: opts.shopper, productId, action },
    });
    console.log(`RecordInteraction ${opts.shopper} ${action} ${productId}`);
  }

  // 4. What the shopper should see next, with a reason for each item.
  const forUser = ((await post(opts, "/v1/recommend/user", {
    userId: opts.shopper,
    k: opts.k,
  })).items ?? []).map(recommendation);
  console.log(`RecommendForUser ${opts.shopper}: ${forUser.length} items`);
  for (const item of forUser) {
    console.log(`  ${item.productId}  score=${item.score.toFixed(4)}  reason=${JSON.stringify(item.reason)}`);
  }

  const result = {
    similar: similar.map((item) => item.productId),
    forUser: forUser.map((item) => item.productId),
    reasons: forUser.map((item) => item.reason),
  };
  console.log(`RESULT ${JSON.stringify(result)}`);
}

try {
  await run(parseCli(process.argv.slice(2)));
} catch (e) {
  if (!(e instanceof CallFailed)) throw e;
  console.error(`error: ${e.message}`);
  process.exitCode = 1;
}
