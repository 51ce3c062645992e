-- Runs once, when the compose stack's PostgreSQL volume is first created:
-- each service owns its database.
CREATE DATABASE orders;
CREATE DATABASE invoices;
