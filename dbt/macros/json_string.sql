{#- A string field of a JSON column: DuckDB and Snowflake spell JSON access differently. -#}
{% macro json_string(column, key) -%}
    {{ return(adapter.dispatch('json_string', 'postmodern')(column, key)) }}
{%- endmacro %}

{% macro default__json_string(column, key) -%}
    json_extract_string({{ column }}, '$.{{ key }}')
{%- endmacro %}

{% macro snowflake__json_string(column, key) -%}
    {{ column }}:{{ key }}::varchar
{%- endmacro %}
