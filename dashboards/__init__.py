"""The web app for call-centre agents and service advisors; Grafana JSON."""
