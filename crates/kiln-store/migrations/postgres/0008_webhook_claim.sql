CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_retrying ON webhook_deliveries (endpoint_id, next_attempt_at) WHERE state = 'pending' AND attempts > 0;
DROP INDEX webhook_deliveries_due
