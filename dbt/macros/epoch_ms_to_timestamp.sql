{#- A UTC timestamp from epoch milliseconds. -#}
{% macro epoch_ms_to_timestamp(column) -%}
    {{ return(adapter.dispatch('epoch_ms_to_timestamp', 'postmodern')(column)) }}
{%- endmacro %}

{% macro default__epoch_ms_to_timestamp(column) -%}
    epoch_ms({{ column }})
{%- endmacro %}

{% macro snowflake__epoch_ms_to_timestamp(column) -%}
    to_timestamp_ntz({{ column }}, 3)
{%- endmacro %}
