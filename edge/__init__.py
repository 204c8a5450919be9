"""The edge agent: sources -> campaigns -> store-and-forward -> MQTT; commands; gate agent."""
