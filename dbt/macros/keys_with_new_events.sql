{#- For incremental models: the distinct `keys` of staged events that arrived since this model's last
    build (its newest `last_etl_timestamp`). Rows with these keys are rebuilt whole. -#}
{% macro keys_with_new_events(keys) -%}
    select distinct {{ keys | join(', ') }}
    from {{ ref('stg_browsing_events') }}
    where etl_timestamp > (select coalesce(max(last_etl_timestamp), -1) from {{ this }})
{%- endmacro %}
