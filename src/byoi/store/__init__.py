"""The metadata store seam: schema, connections, migrations and generic query helpers."""
