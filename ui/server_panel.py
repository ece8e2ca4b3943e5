"""The operator's view in one collapsed "Server" panel: services, models, fetch commands, recent speed."""
from __future__ import annotations

import streamlit as st


def service_state(stages: dict, service: str) -> tuple[bool, str]:
    """(usable, why not, for an operator) of a service from /v1/stages."""
    entry = stages.get("services", {}).get(service)
    if entry is None:
        return False, "not known to the gateway"
    if entry.get("status") == "ok":
        return True, ""
    if entry.get("status") == "down":
        return False, f"service down: {entry.get('error', {}).get('message', 'unreachable')}"
    models = entry.get("info", {}).get("models", {})
    missing = [name for name, m in models.items() if not m.get("available")]
    return False, "no model installed" + (f": {', '.join(missing)}" if missing else "")


def service_label(entry: dict, usable: bool) -> str:
    return "ready" if usable else ("down" if entry.get("status") == "down" else "not installed")


def speed_line(throughput: dict | None) -> str:
    if not throughput or not throughput.get("samples"):
        return "recent speed: no requests yet"
    return (f"recent speed: {throughput['seconds_per_mp']:.2f} s/MP over {throughput['samples']} request(s)"
            if throughput.get("seconds_per_mp") is not None else "recent speed: n/a")


def render(stages: dict | None, gateway_url: str, on_refresh) -> None:
    """The sidebar's single "Server" expander (collapsed): everything an operator needs, nothing else."""
    with st.sidebar.expander("Server", expanded=False, icon=":material/dns:"):
        st.caption(f"Gateway: {gateway_url}")
        st.button("Refresh", key="refresh_stages", on_click=on_refresh)
        if stages is None:
            st.markdown("The stage list is unavailable.")
            return
        for service, entry in sorted(stages.get("services", {}).items()):
            usable, why = service_state(stages, service)
            icon = ":green[●]" if usable else (":red[●]" if entry.get("status") == "down" else ":orange[●]")
            st.markdown(f"{icon} **{service}**: {service_label(entry, usable)}")
            info = entry.get("info", {})
            lines = []
            for name, model in (info.get("models") or {}).items():
                mark = ":green[✔ installed]" if model.get("available") else ":red[✖ not installed]"
                default = " (default)" if model.get("default") else ""
                line = f"- `{name}`{default}: {mark}"
                if not model.get("available") and model.get("fetch_command"):
                    line += f"  \n  fetch: `{model['fetch_command']}`"
                lines.append(line)
            if not info.get("models") and usable:
                lines.append("- classical algorithm, no model needed")
            if info:
                lines.append(f"- {speed_line(info.get('throughput'))}")
            if not usable and why:
                lines.append(f"- {why}")
            st.markdown("\n".join(lines))
