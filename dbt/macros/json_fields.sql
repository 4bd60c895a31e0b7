{#- Several string fields of a JSON column, parsed once: `json_fields` extracts them all, `json_field`
    reads one of the result (by key, or by its position in `keys` where the dialect returns a list). -#}
{% macro json_fields(column, keys) -%}
    {{ return(adapter.dispatch('json_fields', 'postmodern')(column, keys)) }}
{%- endmacro %}

{% macro default__json_fields(column, keys) -%}
    json_extract_string({{ column }}, [{% for key in keys %}'$.{{ key }}'{{ ", " if not loop.last }}{% endfor %}])
{%- endmacro %}

{% macro snowflake__json_fields(column, keys) -%}
    {{ column }}
{%- endmacro %}

{% macro json_field(fields, keys, key) -%}
    {{ return(adapter.dispatch('json_field', 'postmodern')(fields, keys, key)) }}
{%- endmacro %}

{% macro default__json_field(fields, keys, key) -%}
    {{ fields }}[{{ keys.index(key) + 1 }}]
{%- endmacro %}

{% macro snowflake__json_field(fields, keys, key) -%}
    {{ fields }}:{{ key }}::varchar
{%- endmacro %}
