/**
 * The c3po API client: openapi-fetch over the generated `schema.d.ts` (never edit that file by
 * hand: `npm run generate` rebuilds it from the backend).
 */
import createClient, { type Middleware } from "openapi-fetch";

import type { components, operations, paths } from "./schema";

export type { components, operations, paths };
export type Schemas = components["schemas"];
/** Every problem shape the API documents; narrow on `code`. */
export type Problem = Schemas["Problem"];

export interface ClientOptions {
  /** e.g. `https://api.example.com` (paths already start with `/api/v1`). */
  baseUrl: string;
  /** The current access token, read before each request (none for public calls). */
  accessToken?: () => string | undefined;
  fetch?: typeof globalThis.fetch;
}

export function createApiClient(options: ClientOptions) {
  const client = createClient<paths>({ baseUrl: options.baseUrl, fetch: options.fetch });
  const auth: Middleware = {
    onRequest({ request }) {
      const token = options.accessToken?.();
      if (token && !request.headers.has("Authorization")) {
        request.headers.set("Authorization", `Bearer ${token}`);
      }
      return request;
    },
  };
  client.use(auth);
  return client;
}

export type ApiClient = ReturnType<typeof createApiClient>;

/** `POST /api/v1/auth/login` takes an OAuth2 password form, not JSON. */
export function formBody(body: Record<string, string | null | undefined>): URLSearchParams {
  const form = new URLSearchParams();
  for (const [name, value] of Object.entries(body)) {
    if (value != null) form.set(name, value);
  }
  return form;
}

/** A fresh key per user action; send the same one again when retrying that action. */
export function newIdempotencyKey(): string {
  return globalThis.crypto.randomUUID();
}
