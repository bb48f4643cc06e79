/**
 * Admin side of webhooks: register an endpoint (its secret is shown once), rotate the secret, and
 * redeliver what failed. Type-checked in CI with `tsc --strict`.
 */
import { createApiClient, type Schemas } from "../src/client";

const api = createApiClient({ baseUrl: "http://127.0.0.1:8000", accessToken: () => "an admin's access token" });

export async function addEndpoint(url: string): Promise<Schemas["WebhookCreated"]> {
  const { data, error } = await api.POST("/api/v1/webhooks", {
    body: { url, event_types: ["appointment.created", "appointment.cancelled"], description: "CRM" },
  });
  if (error) {
    if (error.code === "invalid_webhook_url") throw new Error(`not a usable URL: ${error.detail}`);
    throw new Error(`${error.code}: ${error.detail}`);
  }
  return data; // data.secret ("whsec_…") is never shown again: display it once
}

export async function rotate(endpointId: string): Promise<string> {
  const { data, error } = await api.POST("/api/v1/webhooks/{webhook_id}/rotate-secret", {
    params: { path: { webhook_id: endpointId } },
  });
  if (error) throw new Error(`${error.code}: ${error.detail}`);
  return `${data.secret} (the old one signs too until ${data.previous_secret_until})`;
}

export async function redeliverFailed(endpointId: string): Promise<number> {
  const { data, error } = await api.GET("/api/v1/webhooks/{webhook_id}/deliveries", {
    params: { path: { webhook_id: endpointId }, query: { limit: 100 } },
  });
  if (error) throw new Error(`${error.code}: ${error.detail}`);
  const failed = data.items.filter((delivery) => delivery.status === "failed");
  for (const delivery of failed) {
    const again = await api.POST("/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver", {
      params: { path: { webhook_id: endpointId, delivery_id: delivery.id } },
    });
    if (again.error && again.error.code !== "webhook_delivery_in_progress") throw new Error(again.error.detail);
  }
  return failed.length;
}
