{#- For incremental models: a condition true for the staged events that arrived since this model's last build
    (its newest `last_etl_timestamp`). Staging deduplicates across loads, so these events were never counted. -#}
{% macro arrived_since_last_build(etl_timestamp_column='etl_timestamp') -%}
    {{ etl_timestamp_column }} > (select coalesce(max(last_etl_timestamp), -1) from {{ this }})
{%- endmacro %}
